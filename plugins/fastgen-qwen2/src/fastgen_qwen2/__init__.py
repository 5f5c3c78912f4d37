"""fastgen family plugin for Qwen2 / Qwen2.5 (written against fastgen_core's public API only)."""
