"""Qwen2 checkpoint names -> engine parameters. Declarative: the core's loader checks that every tensor is
used and every parameter filled, so a wrong rule fails loudly with the tensor's name."""
from __future__ import annotations

from fastgen_core import Rule, WeightMap, fused

L = "model.layers.{i}."
E = "layers.{i}."


def weight_map(c) -> WeightMap:
    rules = [
        Rule("model.embed_tokens.weight", "embed_tokens.weight"),
        Rule("model.norm.weight", "norm.weight"),
        Rule(L + "input_layernorm.weight", E + "input_layernorm.weight"),
        Rule(L + "post_attention_layernorm.weight", E + "post_attention_layernorm.weight"),
        Rule(L + "self_attn.o_proj.weight", E + "self_attn.o_proj.weight"),      # no o_proj bias in Qwen2
        Rule(L + "mlp.down_proj.weight", E + "mlp.down_proj.weight"),
    ]
    # q, k and v (weights and their biases) become one GEMM: concatenated in q, k, v order along dim 0.
    for kind in ("weight", "bias"):
        rules += fused([L + f"self_attn.{p}_proj.{kind}" for p in "qkv"], E + "self_attn.qkv_proj." + kind)
    rules += fused([L + "mlp.gate_proj.weight", L + "mlp.up_proj.weight"], E + "mlp.gate_up_proj.weight")
    ignore = [r"rotary_emb\.inv_freq$"]          # recomputed from rope_theta; old checkpoints saved it
    if c.tie_word_embeddings:
        # lm_head shares embed_tokens' tensor; checkpoints may or may not store the duplicate
        ignore.append(r"^lm_head\.weight$")
    else:
        rules.append(Rule("lm_head.weight", "lm_head.weight"))
    return WeightMap(rules, ignore)
