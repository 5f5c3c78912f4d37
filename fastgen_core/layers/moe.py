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

from .. import kernels
from . import moe_triton
from .activations import get_activation
from .linear import expert_gemv, expert_gemv_fits
from .mlp import gated_act
from .sharded import TPGroup, group_of, shard, split_size

EXPERT_GEMV_MAX_PAIRS = 8       # tokens x top_k up to which a CUDA MoE layer takes experts_gemv


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


def grouped_mm_supported(x: torch.Tensor) -> bool:
    """Whether ``torch.nn.functional.grouped_mm`` runs on ``x``'s device and dtype: one kernel over every
    expert, reading the per-expert row counts from the device (no host sync), so the MoE layer can be
    captured in a CUDA graph. CUDA: bf16 on SM80+ (fp16 runs too, but through a path that copies to the
    host, which a CUDA graph cannot capture, as of torch 2.11); the CPU kernel takes any
    float dtype."""
    if not hasattr(F, "grouped_mm"):
        return False
    if x.device.type == "cuda":
        return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (8, 0)
    return x.device.type == "cpu"


def _grouped_linear_loop(xs: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Fallback for ``F.grouped_mm``: one GEMM per expert with rows (one host sync for the run lengths)."""
    out = xs.new_empty(xs.shape[0], weight.shape[1])
    start = 0
    for e, n in enumerate(counts.tolist()):
        if n:
            out[start:start + n] = F.linear(xs[start:start + n], weight[e])
            start += n
    return out


def grouped_experts_ref(x: torch.Tensor, gate_up_proj: torch.Tensor, down_proj: torch.Tensor,
                        topk_weights: torch.Tensor, topk_ids: torch.Tensor, act: Callable,
                        use_grouped_mm: bool | None = None) -> torch.Tensor:
    """sum_k w[t, k] * expert_{ids[t, k]}(x[t]) -> [T, H], computing each expert only on its own tokens.

    The (token, slot) pairs are sorted by expert (stable, so each expert's rows keep token order) and each
    expert's contiguous run goes through its two GEMMs: ``F.grouped_mm`` where it runs (no host sync),
    else a per-expert loop. Each expert output (in ``x.dtype``) is weighted in float32 and the ``k``
    contributions of a token are summed in float32 and rounded once, as transformers' default
    (``grouped_mm``) experts do. Rounding each contribution to bf16 before adding, as its eager loop does,
    differs by an ulp on most rows, and after a layer that flips routing decisions.
    """
    t, k = topk_ids.shape
    num_experts = gate_up_proj.shape[0]
    flat_ids = topk_ids.reshape(-1)
    order = torch.argsort(flat_ids, stable=True)
    xs = x.index_select(0, order // k)                          # rows sorted by expert
    counts = torch.zeros(num_experts, dtype=torch.int32, device=x.device)
    counts.scatter_add_(0, flat_ids, torch.ones_like(flat_ids, dtype=torch.int32))   # exact in any order
    if use_grouped_mm is None:
        use_grouped_mm = grouped_mm_supported(x)
    if use_grouped_mm:
        offs = counts.cumsum(0, dtype=torch.int32)
        h = gated_act(F.grouped_mm(xs, gate_up_proj.transpose(-2, -1), offs=offs), act)   # SiLU: one kernel
        ys = F.grouped_mm(h, down_proj.transpose(-2, -1), offs=offs)
    elif x.is_cuda and torch.cuda.is_current_stream_capturing():
        # no grouped_mm (float32 or fp16 on CUDA) inside a CUDA graph, where no host sync is allowed: every expert
        # runs over every row and each row keeps its own expert's output (E x the FLOPs; decode batches only)
        sorted_ids = flat_ids.index_select(0, order)[:, None]
        ys = torch.zeros(xs.shape[0], down_proj.shape[1], dtype=x.dtype, device=x.device)
        for e in range(num_experts):
            ys = torch.where(sorted_ids == e, _expert_ffn(xs, gate_up_proj[e], down_proj[e], act), ys)
    else:
        gate, up = _grouped_linear_loop(xs, gate_up_proj, counts).chunk(2, dim=-1)
        ys = _grouped_linear_loop(act(gate) * up, down_proj, counts)
    return kernels.moe_combine(ys, order, topk_weights)      # on CPU its reference: the float32 scatter and sum


def experts_gemv(x: torch.Tensor, gate_up_proj: torch.Tensor, down_proj: torch.Tensor,
                 topk_weights: torch.Tensor, topk_ids: torch.Tensor, act: Callable) -> torch.Tensor:
    """``grouped_experts_ref`` for a few tokens (decode): each (token, slot) pair runs its expert's two
    projections as GEMVs that read only that expert's weights (``layers.linear.expert_gemv``), with no sort,
    no grouping and no host sync; the contributions are weighted and summed in float32 and rounded once,
    as the reference does. At batch 1 this reads top_k of the experts where ``F.grouped_mm`` ran GEMM tiles
    sized for many rows."""
    t, k = topk_ids.shape
    ids = topk_ids.reshape(-1)
    h = gated_act(expert_gemv(x, gate_up_proj, ids, k), act)             # [t * k, I]
    ys = expert_gemv(h, down_proj, ids, 1)                               # [t * k, H]
    return (ys.view(t, k, -1).float() * topk_weights.float()[..., None]).sum(dim=1).to(x.dtype)


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

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, act: str = "silu",
                 tp: TPGroup | None = None):
        super().__init__()
        # tensor parallelism splits every expert's intermediate columns (each rank runs all experts on its
        # slice; the partial outputs are summed by one all-reduce)
        self.tp = tp = group_of(tp)
        n = split_size(intermediate_size, tp, "the experts' intermediate size")
        self.num_experts, self.intermediate_size = num_experts, n
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * n, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, n))
        if tp.size > 1:
            i0 = tp.rank * n
            shard(self.gate_up_proj, 1, [(i0, n), (intermediate_size + i0, n)], 2 * intermediate_size)
            shard(self.down_proj, 2, [(i0, n)], intermediate_size)
        self.act = get_activation(act)

    def forward(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        if topk_ids.numel() <= EXPERT_GEMV_MAX_PAIRS and expert_gemv_fits(x, self.gate_up_proj):
            out = experts_gemv(x, self.gate_up_proj, self.down_proj, topk_weights, topk_ids, self.act)
        elif moe_triton.usable(x, topk_ids, self.gate_up_proj.shape[0]):
            out = moe_triton.experts_triton(x, self.gate_up_proj, self.down_proj, topk_weights, topk_ids, self.act)
        else:
            out = grouped_experts_ref(x, self.gate_up_proj, self.down_proj, topk_weights, topk_ids, self.act)
        return self.tp.all_reduce(out)


class SparseMoE(nn.Module):
    """Router (``gate``, a bias-free Linear H -> E, replicated) + top-k routing + grouped experts: Mixtral's
    FFN. ``tp``: the tensor-parallel group the experts' intermediate columns are split over (None: one process)."""

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int, top_k: int,
                 act: str = "silu", renormalize: bool = True, tp: TPGroup | None = None):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k (num_experts_per_tok) must be in 1..{num_experts} (the number of experts), "
                             f"got {top_k}")
        self.top_k, self.renormalize = top_k, renormalize
        self.gate = nn.Linear(hidden_size, num_experts, bias=False)
        self.experts = GroupedExperts(num_experts, hidden_size, intermediate_size, act, tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = route_topk(self.gate(x), self.top_k, self.renormalize)
        return self.experts(x, weights, ids)
