"""Falcon: rotary attention with one (multi-query) or a few (grouped) KV heads, a GELU MLP, LayerNorm, and
attention + MLP either in parallel from shared or separate norms, or one after the other.

The layout flags are resolved once in ``FalconConfig`` (qkv_layout, norm_layout); this file composes the
core blocks accordingly (``ParallelDecoderLayer``, ``PreNormDecoderLayer`` with LayerNorms) and uses the
core's ``ungroup_qkv`` transform for the grouped QKV layout.
"""
from __future__ import annotations

from functools import partial

from torch import nn

from fastgen_core import Rule, WeightMap
from fastgen_core.layers import (MLP, CausalLM, LayerNorm, ParallelDecoderLayer, PreNormDecoderLayer, RotaryAttention,
                                 RotaryEmbedding, ungroup_qkv)

from .config import FalconConfig


def falcon_layer(c: FalconConfig, layer_idx: int, rotary: RotaryEmbedding) -> nn.Module:
    """The shared blocks in Falcon's three layouts (transformers sums attention into the MLP output, then the
    residual: the shared blocks' order, so results match bit for bit)."""
    attn = RotaryAttention(c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, layer_idx,
                           rotary, qkv_bias=c.bias, o_bias=c.bias, tp=c.tp)
    mlp = MLP(c.hidden_size, c.ffn_hidden_size, c.activation, bias=c.bias, tp=c.tp)
    h, eps = c.hidden_size, c.layer_norm_epsilon
    if c.norm_layout == "sequential":      # x + attn(ln(x)), then h + mlp(ln(h))
        return PreNormDecoderLayer(h, eps, attn, mlp, LayerNorm(h, eps), LayerNorm(h, eps))
    if c.norm_layout == "parallel_two_norms":       # ln_attn feeds attention, ln_mlp the MLP
        return ParallelDecoderLayer(attn, mlp, LayerNorm(h, eps), LayerNorm(h, eps))
    return ParallelDecoderLayer(attn, mlp, LayerNorm(h, eps))        # one input_layernorm feeds both


class FalconForCausalLM(CausalLM):
    def __init__(self, c: FalconConfig):
        rotary = RotaryEmbedding(c.head_dim, c.head_dim, c.rope_theta, c.rope_scaling)
        layers = [falcon_layer(c, i, rotary) for i in range(c.num_hidden_layers)]
        super().__init__(c.vocab_size, c.hidden_size, layers, LayerNorm(c.hidden_size, c.layer_norm_epsilon),
                         c.tie_word_embeddings, tp=c.tp)


# checkpoint norm names -> the shared blocks' (input_layernorm feeds attention, post_attention_layernorm the MLP)
NORMS = {"parallel": {"input_layernorm": "input_layernorm"},
         "parallel_two_norms": {"ln_attn": "input_layernorm", "ln_mlp": "post_attention_layernorm"},
         "sequential": {"input_layernorm": "input_layernorm", "post_attention_layernorm": "post_attention_layernorm"}}


def weight_map(c: FalconConfig) -> WeightMap:
    L, T = "transformer.h.{i}.", "layers.{i}."
    qkv_transform = None
    if c.qkv_layout == "grouped":       # rows grouped per KV head: [q_0..q_{g-1}, k, v] for each group
        qkv_transform = partial(ungroup_qkv, num_kv_heads=c.num_key_value_heads, head_dim=c.head_dim)
    rules = [Rule("transformer.word_embeddings.weight", "embed_tokens.weight"),
             Rule("transformer.ln_f.weight", "norm.weight"),
             Rule("transformer.ln_f.bias", "norm.bias")]
    for kind in ["weight"] + (["bias"] if c.bias else []):
        rules += [Rule(L + "self_attention.query_key_value." + kind, T + "self_attn.qkv_proj." + kind,
                       transform=qkv_transform),
                  Rule(L + "self_attention.dense." + kind, T + "self_attn.o_proj." + kind),
                  Rule(L + "mlp.dense_h_to_4h." + kind, T + "mlp.fc1." + kind),
                  Rule(L + "mlp.dense_4h_to_h." + kind, T + "mlp.fc2." + kind)]
    for hf_norm, norm in NORMS[c.norm_layout].items():
        rules += [Rule(L + f"{hf_norm}.{kind}", T + f"{norm}.{kind}") for kind in ("weight", "bias")]
    ignore = [r"\.inv_freq$"]    # rotary buffers (legacy RW checkpoints saved them)
    if c.tie_word_embeddings:
        ignore.append(r"^lm_head\.weight$")
    else:
        rules.append(Rule("lm_head.weight", "lm_head.weight"))
    return WeightMap(rules, ignore)
