"""GPT-NeoX checkpoint names -> engine parameters.

The one layout quirk: ``attention.query_key_value`` is fused per head, its rows [q_0, k_0, v_0, q_1, k_1,
v_1, ...] (``head_dim`` rows each), while the shared attention's ``qkv_proj`` wants [Q; K; V]. The core's
``ungroup_qkv`` transform reorders it (one query head per KV group), for the weight and the bias alike.
"""
from __future__ import annotations

from functools import partial

from fastgen_core import Rule, WeightMap
from fastgen_core.layers import ungroup_qkv

L, T = "gpt_neox.layers.{i}.", "layers.{i}."


def weight_map(c) -> WeightMap:
    per_head_qkv = partial(ungroup_qkv, num_kv_heads=c.num_attention_heads, head_dim=c.head_dim)
    rules = [Rule("gpt_neox.embed_in.weight", "embed_tokens.weight")]
    for kind in ("weight", "bias"):
        rules += [Rule("gpt_neox.final_layer_norm." + kind, "norm." + kind),
                  Rule(L + "input_layernorm." + kind, T + "input_layernorm." + kind),
                  Rule(L + "post_attention_layernorm." + kind, T + "post_attention_layernorm." + kind),
                  Rule(L + "mlp.dense_h_to_4h." + kind, T + "mlp.fc1." + kind),
                  Rule(L + "mlp.dense_4h_to_h." + kind, T + "mlp.fc2." + kind)]
        if kind == "weight" or c.attention_bias:
            rules += [Rule(L + "attention.query_key_value." + kind, T + "self_attn.qkv_proj." + kind,
                           transform=per_head_qkv),
                      Rule(L + "attention.dense." + kind, T + "self_attn.o_proj." + kind)]
    # buffers older checkpoints saved: the rotary inverse frequencies and the causal mask ("bias") with its
    # fill value ("masked_bias"); the engine recomputes the first and needs neither of the others
    ignore = [r"rotary_emb\.inv_freq$", r"\.attention\.(bias|masked_bias)$"]
    if c.tie_word_embeddings:
        ignore.append(r"^(embed_out|lm_head)\.weight$")     # the embedding's tensor; a stored copy is skipped
    else:
        rules.append(Rule("embed_out.weight", "lm_head.weight"))
    return WeightMap(rules, ignore)
