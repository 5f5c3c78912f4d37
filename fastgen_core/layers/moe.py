"""Mixture-of-experts feed-forward: a router picks ``top_k`` experts per token, and tokens are grouped by
expert so that each expert runs one GEMM pair over only the rows routed to it (never every expert over
every token).

Expert weights are stacked tensors, ``gate_up_proj [E, 2*I, H]`` (gate rows first, then up rows, per
expert) and ``down_proj [E, H, I]``, which is both what transformers 5 holds in memory for Mixtral and
the layout a grouped-GEMM kernel wants. ``moe_dense_ref`` is the naive every-expert oracle the grouped
path (and later kernels) are tested against.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .activations import get_activation


def route_topk(router_logits: torch.Tensor, top_k: int, renormalize: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over experts in float32, then the ``top_k`` largest -> (weights float32 [T, k], ids [T, k]).

    ``renormalize`` divides the kept weights by their sum (Mixtral always does; Qwen-MoE's
    ``norm_topk_prob`` chooses). Top-k runs on the probabilities, as transformers does, so ties break alike.
    """
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def _expert_ffn(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, act: Callable) -> torch.Tensor:
    gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
    return F.linear(act(gate) * up, down)


def grouped_experts_ref(x: torch.Tensor, gate_up_proj: torch.Tensor, down_proj: torch.Tensor,
                        topk_weights: torch.Tensor, topk_ids: torch.Tensor, act: Callable) -> torch.Tensor:
    """sum_k w[t, k] * expert_{ids[t, k]}(x[t]) -> [T, H], computing each expert only on its own tokens.

    The (token, slot) pairs are sorted by expert (stable, so each expert's rows keep token order), each
    expert's contiguous run goes through its two GEMMs, and the weighted rows are scattered back with one
    index_add. Weights stay float32 until the product, then cast to ``x.dtype`` (transformers' order).
    """
    t, k = topk_ids.shape
    num_experts = gate_up_proj.shape[0]
    flat_ids = topk_ids.reshape(-1)
    order = torch.argsort(flat_ids, stable=True)
    token_of = order // k                                       # source token of each sorted pair
    weight_of = topk_weights.reshape(-1).index_select(0, order)
    # One host sync for the run lengths: the per-expert loop needs them as Python ints.
    counts = torch.bincount(flat_ids, minlength=num_experts).tolist()
    xs = x.index_select(0, token_of)
    ys = torch.empty_like(xs)
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        rows = slice(start, start + n)
        y = _expert_ffn(xs[rows], gate_up_proj[e], down_proj[e], act)
        ys[rows] = (y * weight_of[rows, None]).to(ys.dtype)
        start += n
    out = torch.zeros_like(x)
    out.index_add_(0, token_of, ys)
    return out


def moe_dense_ref(x: torch.Tensor, gate_up_proj: torch.Tensor, down_proj: torch.Tensor,
                  topk_weights: torch.Tensor, topk_ids: torch.Tensor, act: Callable) -> torch.Tensor:
    """The naive oracle: every expert over every token, masked by a dense [T, E] routing matrix."""
    num_experts = gate_up_proj.shape[0]
    dense = torch.zeros(x.shape[0], num_experts, dtype=torch.float32, device=x.device)
    dense.scatter_add_(1, topk_ids, topk_weights.float())
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in range(num_experts):
        out += _expert_ffn(x, gate_up_proj[e], down_proj[e], act).float() * dense[:, e:e + 1]
    return out.to(x.dtype)


class GroupedExperts(nn.Module):
    """``num_experts`` gated MLPs with stacked weights, applied by ``grouped_experts_ref``."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, act: str = "silu"):
        super().__init__()
        self.num_experts, self.intermediate_size = num_experts, intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))
        self.act = get_activation(act)

    def forward(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        return grouped_experts_ref(x, self.gate_up_proj, self.down_proj, topk_weights, topk_ids, self.act)


class SparseMoE(nn.Module):
    """Router (``gate``, a bias-free Linear H -> E) + top-k routing + grouped experts: Mixtral's FFN."""

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int, top_k: int,
                 act: str = "silu", renormalize: bool = True):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k (num_experts_per_tok) must be in 1..{num_experts} (the number of experts), "
                             f"got {top_k}")
        self.top_k, self.renormalize = top_k, renormalize
        self.gate = nn.Linear(hidden_size, num_experts, bias=False)
        self.experts = GroupedExperts(num_experts, hidden_size, intermediate_size, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = route_topk(self.gate(x), self.top_k, self.renormalize)
        return self.experts(x, weights, ids)
