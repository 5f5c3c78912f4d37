"""Benchmark presets of this family (``fastgen bench --preset``): full-size configs, run with dummy weights."""


def phi_2():
    """microsoft/phi-2's architecture (2.7B): partial rotary over 40% of each head."""
    from transformers import PhiConfig
    return PhiConfig(vocab_size=51200, hidden_size=2560, intermediate_size=10240, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, partial_rotary_factor=0.4,
                     max_position_embeddings=2048, rope_theta=10000.0, hidden_act="gelu_new",
                     layer_norm_eps=1e-5, tie_word_embeddings=False)
