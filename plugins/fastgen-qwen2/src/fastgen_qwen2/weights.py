"""Qwen2 / Qwen3 checkpoint names -> engine parameters: the Llama naming with biases on q, k and v (Qwen2;
Qwen3 only with attention_bias, then on o_proj too) and Qwen3's q_norm / k_norm.
Declarative: the core's loader checks that every tensor is used and every parameter filled, so a wrong rule
fails loudly with the tensor's name."""
from __future__ import annotations

from fastgen_core import Rule, WeightMap
from fastgen_core.layers import gated_mlp_rules, prenorm_decoder_weight_map


def weight_map(c) -> WeightMap:
    wm = prenorm_decoder_weight_map(gated_mlp_rules(), c.tie_word_embeddings, qkv_bias=c.qkv_bias, o_bias=c.o_bias)
    if c.qk_norm:                  # Qwen3's per-head norms
        L, T = "model.layers.{i}.self_attn.", "layers.{i}.self_attn."
        wm = WeightMap(wm.rules + [Rule(L + f"{p}_norm.weight", T + f"{p}_norm.weight") for p in "qk"], wm.ignore)
    return wm
