"""Benchmark presets of this family (``fastgen bench --preset``): full-size configs, run with dummy weights."""


def mixtral_small():
    """Mixtral-8x7B's block shapes with 8 of its 32 layers, so it fits one 80 GB card in bf16 (11.9B)."""
    from transformers import MixtralConfig
    return MixtralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=8,
                         num_attention_heads=32, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2,
                         max_position_embeddings=4096)


def mixtral_8x7b():
    """The whole Mixtral-8x7B (46.7B, 93 GB in bf16): fits one H200."""
    from transformers import MixtralConfig
    return MixtralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2,
                         max_position_embeddings=32768)
