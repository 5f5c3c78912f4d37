"""The small dense and MoE configs the GPU engine tests share (vocab 512, hidden 128, 2 layers, GQA 4/2; Phi:
hidden 160, head_dim 40 with 16 rotary channels; Falcon-40B's layout: two LayerNorms feeding attention and the MLP)."""


def tiny_gpu_config(name: str):
    import transformers as t
    common = dict(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512)
    if name == "llama":
        return t.LlamaConfig(**common, intermediate_size=256)
    if name == "phi":               # partial rotary, gelu_new, LayerNorm: the fused kernels of another family
        return t.PhiConfig(**{**common, "hidden_size": 160}, intermediate_size=320, partial_rotary_factor=0.4)
    if name == "falcon-40b":        # parallel attention with its own ln_mlp: the two-stream fork norms on both streams
        return t.FalconConfig(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                              num_kv_heads=2, new_decoder_architecture=True, max_position_embeddings=512)
    return t.MixtralConfig(**common, intermediate_size=128, num_local_experts=4, num_experts_per_tok=2)
