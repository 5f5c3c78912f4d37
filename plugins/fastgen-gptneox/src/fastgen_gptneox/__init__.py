"""fastgen family plugin for GPT-NeoX and Pythia (written against fastgen_core's public API only)."""
