"""A MoE layer's experts as two Triton GEMMs over (token, slot) pairs grouped by expert: for decode-sized steps,
where ``F.grouped_mm`` streams every expert's weights well below the copy bandwidth with tiles sized for prompt
chunks, while an expert sees ~16 rows.

The pairs are laid out by expert with each expert's run padded to a multiple of ``BLOCK_M`` (``align_by_expert``,
device ops only and static shapes: no host sync, so decode graphs capture it). Each program multiplies one
BLOCK_M block of one expert's rows by a BLOCK_N slice of that expert's weight, accumulating in float32 and rounding
once (as a GEMM does): the first GEMM reads each pair's token row of x, the second the first one's activated output
in the padded layout. ``moe_combine_rows`` then weights and sums each token's k rows as the grouped path does.

On by default for bf16/fp16 on CUDA (the kernel plan's ``moe_experts``; docs/performance.md has the A/B). It takes
a step while an expert sees about one BLOCK_M block of rows (``max_pairs``): each block re-reads its expert's
weights, so at 128 tokens (32 rows an expert) grouped_mm wins. Under Triton's interpreter (``TRITON_INTERPRET=1``)
it runs on the CPU, which tests/test_moe_triton_interpreted.py uses.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

from .. import kernels

BLOCK_M = 16


def max_pairs(num_experts: int) -> int:
    """(token, slot) pairs up to which a step takes this path: one BLOCK_M block an expert on average (Mixtral's 8
    experts, top-2: 64 tokens). Prompt chunks keep grouped_mm."""
    return BLOCK_M * num_experts


@functools.lru_cache(maxsize=None)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["n_pairs", "stride_a", "stride_c"])
    def _expert_gemm(a_ptr, w_ptr, c_ptr, rows_ptr, block_expert_ptr, n_pairs, N, K,
                     stride_a, stride_we, stride_wn, stride_c, a_div,
                     A_BY_POSITION: tl.constexpr, IEEE: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        e = tl.load(block_expert_ptr + pid_m)
        if e >= 0:
            offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            pairs = tl.load(rows_ptr + offs_m)              # a pair id, or n_pairs on padding rows
            valid = pairs < n_pairs
            if A_BY_POSITION:
                a_rows = offs_m                             # the second GEMM reads the padded layout
            else:
                a_rows = pairs // a_div                     # the first reads the pair's token
            offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            offs_k = tl.arange(0, BLOCK_K)
            n_ok = offs_n < N
            a_ptrs = a_ptr + a_rows[:, None].to(tl.int64) * stride_a + offs_k[None, :]
            w_ptrs = w_ptr + e.to(tl.int64) * stride_we + offs_n[None, :].to(tl.int64) * stride_wn + offs_k[:, None]
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                k_ok = offs_k < K - k0
                a = tl.load(a_ptrs, mask=valid[:, None] & k_ok[None, :], other=0.0)
                w = tl.load(w_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
                if IEEE:
                    acc += tl.dot(a, w, input_precision="ieee")
                else:
                    acc += tl.dot(a, w)
                a_ptrs += BLOCK_K
                w_ptrs += BLOCK_K
            c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * stride_c + offs_n[None, :]
            tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=valid[:, None] & n_ok[None, :])

    return _expert_gemm


@functools.lru_cache(maxsize=None)
def available() -> bool:
    return kernels.triton_builds(_kernel)


def usable(x: torch.Tensor, topk_ids: torch.Tensor, num_experts: int) -> bool:
    """Whether a MoE layer's step takes ``experts_triton``: bf16/fp16 on CUDA, a decode-sized step (``max_pairs``),
    the kernel plan keeps ``moe_triton`` and Triton is present."""
    return (x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and topk_ids.numel() <= max_pairs(num_experts)
            and kernels.allows("moe_triton") and available())


def align_by_expert(topk_ids: torch.Tensor, num_experts: int, block_m: int = BLOCK_M
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay the (token, slot) pairs out by expert, each expert's run padded to a multiple of ``block_m``.

    Returns ``rows`` [R] (the pair at each padded position; ``P`` = the number of pairs on padding), ``block_expert``
    [R / block_m] (each block's expert, -1 past the last run) and ``position`` [P] (each pair's padded position).
    R = P + E (block_m - 1) rounded up to block_m, whatever the routing: static shapes, no host sync.
    """
    flat = topk_ids.reshape(-1)
    p, dev = flat.numel(), flat.device
    order = torch.argsort(flat, stable=True)                 # pairs by expert, token order kept within one
    counts = torch.zeros(num_experts, dtype=torch.long, device=dev)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    pad_end = padded.cumsum(0)
    pad_start = pad_end - padded
    start = counts.cumsum(0) - counts
    sorted_e = flat.index_select(0, order)
    pos = pad_start.index_select(0, sorted_e) + torch.arange(p, device=dev) - start.index_select(0, sorted_e)
    r = -(-(p + num_experts * (block_m - 1)) // block_m) * block_m
    rows = torch.full((r,), p, dtype=torch.long, device=dev)
    rows[pos] = order
    block_start = torch.arange(0, r, block_m, device=dev)
    block_expert = torch.searchsorted(pad_end, block_start, right=True)
    block_expert = torch.where(block_start < pad_end[-1], block_expert, torch.full_like(block_expert, -1))
    position = torch.empty(p, dtype=torch.long, device=dev)
    position[order] = pos
    return rows, block_expert.to(torch.int32), position


def _tiles(n: int, k: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages): weight tiles long in K, streamed in stages."""
    return min(64, max(16, 1 << (n - 1).bit_length())), min(128, max(16, 1 << (k - 1).bit_length())), 4, 4


def expert_gemm(a: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor, block_expert: torch.Tensor,
                n_pairs: int, a_div: int, by_position: bool) -> torch.Tensor:
    """out[i] = a_row(i) @ weight[expert of i]^T for every padded position i of a real pair (padding rows are left
    unwritten): a_row(i) = a[rows[i] // a_div], or a[i] when ``by_position``. weight [E, N, K]."""
    n, k = weight.shape[1], weight.shape[2]
    out = a.new_empty(rows.numel(), n)
    if rows.numel() == 0:
        return out
    bn, bk, warps, stages = _tiles(n, k)
    grid = (block_expert.numel(), -(-n // bn))
    _kernel()[grid](a, weight, out, rows, block_expert, n_pairs, n, k, a.stride(0), weight.stride(0),
                    weight.stride(1), out.stride(0), a_div, A_BY_POSITION=by_position,
                    IEEE=a.dtype == torch.float32, BLOCK_M=BLOCK_M, BLOCK_N=bn, BLOCK_K=bk,
                    num_warps=warps, num_stages=stages)
    return out


def experts_triton(x: torch.Tensor, gate_up_proj: torch.Tensor, down_proj: torch.Tensor,
                   topk_weights: torch.Tensor, topk_ids: torch.Tensor, act: Callable) -> torch.Tensor:
    """``grouped_experts_ref``'s result through ``expert_gemm``: gate_up for each pair's token, the gated activation,
    down, then each token's k outputs weighted and summed in float32 (``kernels.moe_combine_rows``)."""
    from .mlp import gated_act
    t, k = topk_ids.shape
    rows, block_expert, position = align_by_expert(topk_ids, gate_up_proj.shape[0])
    x = x.contiguous()
    h = gated_act(expert_gemm(x, gate_up_proj, rows, block_expert, t * k, k, False), act)
    ys = expert_gemm(h, down_proj, rows, block_expert, t * k, 1, True)
    return kernels.moe_combine_rows(ys, position, topk_weights)
