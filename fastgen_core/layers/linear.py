"""Linear layers, with a weight-streaming GEMV (kernels/gemv.cu) for the few-token forwards of decoding.

At one token per forward a linear layer is bound by reading its weight. This kernel reads the weights of
Phi-2's and Llama-2-7B's layers faster than cuBLAS at one row, splitting K over warps where few output rows leave
SMs idle; at 2-4 rows cuBLAS is as fast or faster (tools/gemv_bench.py; docs/performance.md has the figures).
So ``linear(x, weight, bias)`` runs the CuPy GEMV for a single row on CUDA in bf16/fp16 where the kernel plan's
``linear`` operation keeps ``gemv_ksplit`` or ``gemv`` (the same kernel without the K split), else
``torch.nn.functional.linear``, its reference. Every linear layer the core builds (``layers.sharded``:
column, row and vocabulary layers) is a ``Linear`` and goes through it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels

GEMV_CU = "gemv.cu"
GEMV_MAX_ROWS = 1
# the (R, U, KS) triples gemv.cuh's FASTGEN_GEMV_CONFIGS instantiates (rows per warp group, loads in flight per
# row, warps per group splitting K), for 1 and 2 rows
CONFIGS = tuple((r, u, ks) for r, u in ((1, 4), (2, 2), (4, 2)) for ks in (1, 2, 4))
_HALF = (torch.bfloat16, torch.float16)


def _streamable(x: torch.Tensor, weight: torch.Tensor, name: str) -> bool:
    """What both GEMV kernels need: bf16/fp16 operands of one dtype, K a multiple of 8, the weight contiguous
    and 16-byte aligned (its rows are read with 16-byte loads), and the kernel ``name`` switched on."""
    k = weight.shape[-1]
    return (x.dtype in _HALF and weight.dtype == x.dtype and x.shape[-1] == k and k % 8 == 0
            and weight.is_contiguous() and weight.data_ptr() % 16 == 0 and kernels.use(x, name))


def gemv_fits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``linear`` can take the GEMV kernel for these operands."""
    return (0 < x.numel() // weight.shape[-1] <= GEMV_MAX_ROWS
            and (bias is None or (bias.dtype == x.dtype and bias.is_contiguous()))
            and (_streamable(x, weight, "gemv_ksplit") or _streamable(x, weight, "gemv")))


GEMV_MIN_BLOCKS = 960


def gemv_config(n: int, k: int) -> tuple[int, int, int, int]:
    """(rows of W per warp group, 16-byte loads in flight per row, warps per block, warps per group) for
    W [n, k] at one row. Two rows per group, four warps per block; K is split over the fewest warps (1, 2, 4)
    that make at least ``GEMV_MIN_BLOCKS`` blocks (few output rows: Phi-2's dense and fc2, Llama-2-7B's o
    and down), and over four for Llama-sized wide layers (k >= 4096, n >= 8192). That picks the sweep's
    best, or within 2% of it, for every layer of Phi-2 and Llama-2-7B (docs/bench-results/gemv-ks-h200.jsonl).
    Where the plan keeps ``gemv`` but not ``gemv_ksplit``: one warp per group."""
    if not kernels.allows("gemv_ksplit"):
        return (*expert_gemv_config(n, k), 1)
    if k >= 4096 and n >= 8192:
        return 2, 2, 4, 4
    ks = 1
    while ks < 4 and n * ks < 2 * 4 * GEMV_MIN_BLOCKS:
        ks *= 2
    return 2, 2, 4, ks


def expert_gemv_config(n: int, k: int) -> tuple[int, int, int]:
    """(R, U, warps) of ``expert_gemv`` (and of ``gemv`` before the K split): four rows per warp for
    Mixtral-sized experts, two elsewhere."""
    return (4, 2, 4) if k >= 4096 and n >= 8192 else (2, 2, 4)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         config: tuple[int, ...] | None = None, source=None, prefix: str = "gemv") -> torch.Tensor:
    """``F.linear(x, weight, bias)`` by the GEMV kernel (the caller checked ``gemv_fits``). ``config``:
    (rows per warp group, loads in flight, warps per block, warps per group), (R, U, KS) one of ``CONFIGS``
    and the warps a multiple of KS (default: ``gemv_config``).
    ``source``/``prefix``: another module's instantiation of gemv.cuh with an epilogue (a plugin's
    ``FASTGEN_GEMV_CONFIGS(prefix, Act, ...)``), e.g. fc1 with its activation; default: kernels/gemv.cu."""
    n, k = weight.shape
    x2 = x.reshape(-1, k)
    if not x2.is_contiguous() or x2.data_ptr() % 16:
        x2 = x2.contiguous()
    m = x2.shape[0]
    r, u, warps, ks = config or gemv_config(n, k)
    y = x2.new_empty(m, n)
    grid = (-(-n // (r * (warps // ks))),)
    name = f"{prefix}_{kernels.SUFFIX[x.dtype]}_m{m}_r{r}_u{u}" + (f"_s{ks}" if ks > 1 else "")
    kernels.launch(source or kernels.core_source(GEMV_CU), name, grid, (32 * warps,),
                   (kernels.ptr(y), kernels.ptr(x2), kernels.ptr(weight), kernels.ptr(bias),
                    kernels.i32(n), kernels.i32(k)), x.device)
    return y.view(*x.shape[:-1], n)


def expert_gemv_fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``expert_gemv`` can take x [rows, K] and stacked experts ``weight`` [E, N, K]."""
    return x.is_cuda and weight.dim() == 3 and _streamable(x, weight, "expert_gemv")


def expert_gemv_ref(x: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, x_div: int) -> torch.Tensor:
    """``expert_gemv`` in torch: one ``F.linear`` per pair."""
    ids = ids.reshape(-1)
    rows = [F.linear(x[p // x_div], weight[e]) for p, e in enumerate(ids.tolist())]
    return torch.stack(rows) if rows else x.new_empty(0, weight.shape[1])


def expert_gemv(x: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, x_div: int) -> torch.Tensor:
    """y [P, N] with row p = x[p // x_div] @ weight[ids[p]]^T: each (token, slot) pair of a decode step's
    mixture-of-experts layer through its own expert, reading only that expert's weight (kernels/gemv.cu).
    ``ids`` [P] int64 expert per pair, on the device (no host sync: a CUDA graph captures it)."""
    _, n, k = weight.shape
    x = x.contiguous()
    ids = ids.reshape(-1).to(torch.int64).contiguous()
    p = ids.numel()
    r, u, warps = expert_gemv_config(n, k)
    y = x.new_empty(p, n)
    if p:
        kernels.launch(kernels.core_source(GEMV_CU), f"expert_gemv_{kernels.SUFFIX[x.dtype]}_r{r}_u{u}",
                       (-(-n // (r * warps)), p), (32 * warps,),
                       (kernels.ptr(y), kernels.ptr(x), kernels.ptr(weight), kernels.ptr(ids), kernels.i32(x_div),
                        kernels.i32(n), kernels.i32(k)), x.device)
    return y


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, by the GEMV kernel where it fits (see the module's docstring)."""
    if x.is_cuda and gemv_fits(x, weight, bias):
        return gemv(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, names and numerics on CPU) whose forward is ``linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
