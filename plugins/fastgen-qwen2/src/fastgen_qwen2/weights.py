"""Qwen2 checkpoint names -> engine parameters: the Llama naming with biases on q, k and v (none on o_proj).
Declarative: the core's loader checks that every tensor is used and every parameter filled, so a wrong rule
fails loudly with the tensor's name."""
from __future__ import annotations

from fastgen_core import WeightMap
from fastgen_core.layers import gated_mlp_rules, prenorm_decoder_weight_map


def weight_map(c) -> WeightMap:
    return prenorm_decoder_weight_map(gated_mlp_rules(), c.tie_word_embeddings, qkv_bias=True, o_bias=False)
