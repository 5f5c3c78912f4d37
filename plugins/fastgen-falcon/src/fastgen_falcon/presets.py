"""Benchmark presets of this family (``fastgen bench --preset``): full-size configs, run with dummy weights."""


def falcon_7b():
    """tiiuae/falcon-7b's architecture: multi-query attention, attention and MLP in parallel."""
    from transformers import FalconConfig
    return FalconConfig(vocab_size=65024, hidden_size=4544, num_hidden_layers=32, num_attention_heads=71,
                        multi_query=True, parallel_attn=True, bias=False, new_decoder_architecture=False,
                        alibi=False, max_position_embeddings=2048)


def falcon_40b():
    """Falcon-40B (new decoder architecture: grouped KV heads, two layernorms): 83.7 GB in bf16, one H200."""
    from transformers import FalconConfig
    return FalconConfig(vocab_size=65024, hidden_size=8192, num_hidden_layers=60, num_attention_heads=128,
                        num_kv_heads=8, new_decoder_architecture=True, parallel_attn=True, bias=False, alibi=False,
                        max_position_embeddings=2048)
