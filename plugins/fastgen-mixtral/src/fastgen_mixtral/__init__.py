"""fastgen family plugin for Mixtral (sparse mixture of experts)."""
