"""Benchmark presets of this family (``fastgen bench --preset``): full-size configs, run with dummy weights."""


def llama_2_7b():
    """meta-llama/Llama-2-7b's architecture."""
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5)


def tiny_llama():
    """A two-layer Llama for CPU smoke tests of the bench itself."""
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
