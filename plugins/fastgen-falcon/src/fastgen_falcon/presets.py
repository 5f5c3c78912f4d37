"""Benchmark presets of this family (``fastgen bench --preset``): full-size configs, run with dummy weights."""


def falcon_7b():
    """tiiuae/falcon-7b's architecture: multi-query attention, attention and MLP in parallel."""
    from transformers import FalconConfig
    return FalconConfig(vocab_size=65024, hidden_size=4544, num_hidden_layers=32, num_attention_heads=71,
                        multi_query=True, parallel_attn=True, bias=False, new_decoder_architecture=False,
                        alibi=False, max_position_embeddings=2048)
