"""Decoder building blocks shared by families: rotary attention, the pre-norm block, the causal-LM shell.

Engine parameter names follow transformers where users know them (``embed_tokens``, ``qkv_proj``,
``o_proj``, ``input_layernorm``...), so a family's weight map reads like the checkpoint it loads.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .attention import ForwardContext, PagedAttention
from .norm import RMSNorm
from .rotary import RotaryEmbedding


class RotaryAttention(nn.Module):
    """Fused QKV projection -> rotary (full or partial, or none) -> paged attention -> output projection."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, layer_idx: int,
                 rotary: RotaryEmbedding | None, qkv_bias: bool = False, o_bias: bool = False,
                 sliding_window: int | None = None, scale: float | None = None):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_size, self.kv_size = num_heads * head_dim, num_kv_heads * head_dim
        self.qkv_proj = nn.Linear(hidden_size, self.q_size + 2 * self.kv_size, bias=qkv_bias)
        self.o_proj = nn.Linear(self.q_size, hidden_size, bias=o_bias)
        self.rotary = rotary
        self.attn = PagedAttention(num_heads, num_kv_heads, head_dim, layer_idx, scale, sliding_window)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        if self.rotary is not None:
            q, k = self.rotary(ctx.positions, q, k)
        return self.o_proj(self.attn(q, k, v, ctx))


class PreNormDecoderLayer(nn.Module):
    """x + attn(norm(x)); then h + mlp(norm(h)). Llama, Mistral, Qwen2, Mixtral (the mlp may be an MoE)."""

    def __init__(self, hidden_size: int, eps: float, self_attn: nn.Module, mlp: nn.Module):
        super().__init__()
        self.input_layernorm = RMSNorm(hidden_size, eps)
        self.self_attn = self_attn
        self.post_attention_layernorm = RMSNorm(hidden_size, eps)
        self.mlp = mlp

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), ctx)
        return h + self.mlp(self.post_attention_layernorm(h))


class CausalLM(nn.Module):
    """embed_tokens -> layers -> norm -> lm_head; families supply the layers and the final norm.

    The engine calls ``forward(input_ids, ctx) -> hidden [T, H]`` and ``compute_logits(hidden) -> [n, V]``
    (only on the rows it samples). Override ``embed`` for learned positions or projections (OPT).
    """

    def __init__(self, vocab_size: int, hidden_size: int, layers: list[nn.Module], norm: nn.Module,
                 tie_word_embeddings: bool = False, lm_head_bias: bool = False):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, hidden_size)
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=lm_head_bias)
        if tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def embed(self, input_ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(self, input_ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        h = self.embed(input_ids, ctx)
        for layer in self.layers:
            h = layer(h, ctx)
        return self.norm(h)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)


def build_layers(n: int, make: Callable[[int], nn.Module]) -> list[nn.Module]:
    return [make(i) for i in range(n)]
