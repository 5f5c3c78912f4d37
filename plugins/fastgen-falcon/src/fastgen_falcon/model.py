"""Falcon: rotary attention with one (multi-query) or a few (grouped) KV heads, a GELU MLP, LayerNorm, and
attention + MLP either in parallel from shared or separate norms, or one after the other.

The layout flags are resolved once in ``FalconConfig`` (qkv_layout, norm_layout); this file composes the
core blocks accordingly and names the one weight transform Falcon needs (``ungroup_qkv``).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from fastgen_core import Rule, WeightMap
from fastgen_core.layers import MLP, CausalLM, ForwardContext, RotaryAttention, RotaryEmbedding

from .config import FalconConfig


class FalconDecoderLayer(nn.Module):
    def __init__(self, c: FalconConfig, layer_idx: int, rotary: RotaryEmbedding):
        super().__init__()
        self.norm_layout = c.norm_layout
        self.self_attention = RotaryAttention(c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
                                              c.head_dim, layer_idx, rotary, qkv_bias=c.bias, o_bias=c.bias)
        self.mlp = MLP(c.hidden_size, c.ffn_hidden_size, c.activation, bias=c.bias)
        h, eps = c.hidden_size, c.layer_norm_epsilon
        if c.norm_layout == "parallel_two_norms":
            self.ln_attn = nn.LayerNorm(h, eps=eps)
            self.ln_mlp = nn.LayerNorm(h, eps=eps)
        else:
            self.input_layernorm = nn.LayerNorm(h, eps=eps)
        if c.norm_layout == "sequential":
            self.post_attention_layernorm = nn.LayerNorm(h, eps=eps)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        if self.norm_layout == "parallel_two_norms":
            attn_in, mlp_in = self.ln_attn(x), self.ln_mlp(x)
        else:
            attn_in = mlp_in = self.input_layernorm(x)
        attn = self.self_attention(attn_in, ctx)
        if self.norm_layout == "sequential":
            h = x + attn
            return h + self.mlp(self.post_attention_layernorm(h))
        # transformers adds attention into the MLP output first, then the residual: keep that order
        return x + (self.mlp(mlp_in) + attn)


class FalconForCausalLM(CausalLM):
    def __init__(self, c: FalconConfig):
        rotary = RotaryEmbedding(c.head_dim, c.head_dim, c.rope_theta, c.rope_scaling)
        layers = [FalconDecoderLayer(c, i, rotary) for i in range(c.num_hidden_layers)]
        super().__init__(c.vocab_size, c.hidden_size, layers, nn.LayerNorm(c.hidden_size, eps=c.layer_norm_epsilon),
                         c.tie_word_embeddings)


def ungroup_qkv(t: torch.Tensor, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """Falcon-40B's query_key_value rows, grouped per KV head ([q_0..q_{g-1}, k, v] for each of the
    ``num_kv_heads`` groups), reordered to [Q; K; V]. Works for the weight [rows, in] and the bias [rows].

    Query heads keep their group-major order, so query head ``j`` reads KV head ``j // g``, which is what
    the shared attention's repeat_interleave gives.
    """
    rest = t.shape[1:]
    groups = t.reshape(num_kv_heads, -1, head_dim, *rest)          # [kv, g + 2, D, ...]
    q = groups[:, :-2].reshape(-1, *rest)
    k = groups[:, -2].reshape(-1, *rest)
    v = groups[:, -1].reshape(-1, *rest)
    return torch.cat([q, k, v], dim=0)


NORMS = {"parallel": ("input_layernorm",), "parallel_two_norms": ("ln_attn", "ln_mlp"),
         "sequential": ("input_layernorm", "post_attention_layernorm")}


def weight_map(c: FalconConfig) -> WeightMap:
    L, T = "transformer.h.{i}.", "layers.{i}."
    qkv_transform = None
    if c.qkv_layout == "grouped":
        qkv_transform = partial(ungroup_qkv, num_kv_heads=c.num_key_value_heads, head_dim=c.head_dim)
    rules = [Rule("transformer.word_embeddings.weight", "embed_tokens.weight"),
             Rule("transformer.ln_f.weight", "norm.weight"),
             Rule("transformer.ln_f.bias", "norm.bias")]
    for kind in ["weight"] + (["bias"] if c.bias else []):
        rules += [Rule(L + "self_attention.query_key_value." + kind, T + "self_attention.qkv_proj." + kind,
                       transform=qkv_transform),
                  Rule(L + "self_attention.dense." + kind, T + "self_attention.o_proj." + kind),
                  Rule(L + "mlp.dense_h_to_4h." + kind, T + "mlp.fc1." + kind),
                  Rule(L + "mlp.dense_4h_to_h." + kind, T + "mlp.fc2." + kind)]
    for norm in NORMS[c.norm_layout]:
        rules += [Rule(L + f"{norm}.{kind}", T + f"{norm}.{kind}") for kind in ("weight", "bias")]
    ignore = [r"\.inv_freq$"]    # rotary buffers (legacy RW checkpoints saved them)
    if c.tie_word_embeddings:
        ignore.append(r"^lm_head\.weight$")
    else:
        rules.append(Rule("lm_head.weight", "lm_head.weight"))
    return WeightMap(rules, ignore)
