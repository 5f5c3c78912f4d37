"""Benchmark presets of this family (``fastgen bench --preset``): full-size configs, run with dummy weights."""


def pythia_1b():
    """EleutherAI/pythia-1b: parallel residual, a quarter of each 256-channel head rotated."""
    from transformers import GPTNeoXConfig
    return GPTNeoXConfig(vocab_size=50304, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=8, rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True,
                         hidden_act="gelu", layer_norm_eps=1e-5, max_position_embeddings=2048,
                         tie_word_embeddings=False)
