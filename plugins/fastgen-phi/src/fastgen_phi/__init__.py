"""fastgen family plugin for Phi-2 (parallel attention/MLP, partial rotary)."""
