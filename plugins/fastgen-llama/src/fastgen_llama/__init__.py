"""fastgen family plugin for Llama and Mistral."""
