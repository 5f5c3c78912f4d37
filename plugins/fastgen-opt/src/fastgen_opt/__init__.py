"""fastgen family plugin for OPT."""
