"""Decode attention of many sequences without GQA as a CuPy kernel on the CUDA cores (kernels/mha_decode.cu).

The Triton kernel (``paged_decode``) scores a decode on the tensor cores, whose smallest tile pads a query row
to 16 and Phi-2's head_dim 80 to 128; with one query head per KV head (Phi-2, Llama-2-7B, OPT) that is 16 x 1.6
times the products a key needs. This kernel spends head_dim products and one exp2 a key, and reads the cache
faster for those models (docs/performance.md has the A/B). ``paged_decode`` runs it for steps with at least
``MANY_PROGRAMS`` (sequence, head) pairs when ``fits`` (below that the Triton kernel's context splits keep the
GPU busy) and the kernel plan keeps ``mha_decode``; the reference is ``attention.paged_attention_ref``, and
tests/gpu/test_attention_gpu.py compares the two.
"""
from __future__ import annotations

import torch

from .. import kernels
from ..ops import MANY_PROGRAMS

MHA_DECODE_CU = "mha_decode.cu"
THREADS = 128
MIN_PROGRAMS = MANY_PROGRAMS     # from here on a decode step needs no context splits (paged_decode.num_splits)
HEAD_DIMS = (64, 80, 96, 128)     # compiled
FASTER_HEAD_DIMS = (64, 80)       # taken at any number of programs (``fits``)
FORMS = ((4, 4), (4, 1))      # (lanes a key, keys a lane loads at once) compiled; the first is the default
MAX_PROGRAMS_128 = 512        # head_dim 128 from here on: the Triton kernel ties or wins
# decode kernels put the heads on the grid's first axis: the blocks that run side by side are one sequence's
# heads, which read adjacent rows of the same cache slots, instead of one head of many sequences
HEADS_FIRST = True


def fits(hq: int, hk: int, d: int, dtype: torch.dtype, programs: int) -> bool:
    """Whether a decode step of ``programs`` (sequence, head) pairs with these heads takes the kernel: no GQA,
    16-bit, at least ``MIN_PROGRAMS``, and a head_dim where it beats the Triton kernel: 80 and 64 at any count,
    128 only below ``MAX_PROGRAMS_128``. Not 96: compiled and tested but slower."""
    return (hq == hk and dtype in (torch.bfloat16, torch.float16) and programs >= MIN_PROGRAMS
            and (d in FASTER_HEAD_DIMS or (d == 128 and programs < MAX_PROGRAMS_128)))


def usable(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta, out: torch.Tensor) -> bool:
    """``fits``, the CuPy kernels on (``kernels.use``), and the layouts the kernel reads and writes: a row's
    heads adjacent in q and out, a contiguous cache of 16-byte aligned rows, long indices."""
    hq, d = q.shape[1:]
    hk = k_cache.shape[-2]
    sd = meta.decode_rows.numel()
    return (fits(hq, hk, d, q.dtype, sd * hk) and kernels.use(q, "mha_decode")
            and k_cache.dtype == v_cache.dtype == q.dtype and q.stride(-1) == out.stride(-1) == 1
            and q.stride(-2) == out.stride(-2) == d
            and k_cache.is_contiguous() and v_cache.is_contiguous()
            and k_cache.data_ptr() % 16 == 0 and v_cache.data_ptr() % 16 == 0
            and meta.block_tables.stride(-1) == 1
            and all(x.dtype == torch.long for x in (meta.block_tables, meta.decode_rows, meta.decode_seqs,
                                                     meta.context_lens)))


def default_form() -> tuple[int, int]:
    """(4, 4), the fastest form at every Phi-2 shape measured with the heads first; (4, 1), with fewer
    registers, wins only at head_dim 128 from 512 programs, where the kernel is not used."""
    return FORMS[0]


def mha_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta, scale: float,
               sliding_window: int | None, out: torch.Tensor, form: tuple[int, int] | None = None,
               heads_first_grid: bool | None = None) -> None:
    """Write attention for the decode rows of ``q`` [T, H, D] into ``out`` (same shape): one launch, a block
    per (decode row, head). ``form``: (lanes a key, keys a lane loads at once), one of ``FORMS``;
    ``heads_first_grid``: the heads on the grid's first axis (default ``HEADS_FIRST``)."""
    if form is not None and tuple(form) not in FORMS:
        raise ValueError(f"mha_decode form {tuple(form)} is not compiled; allowed: {FORMS}")
    hk, d = k_cache.shape[-2:]
    sd = meta.decode_rows.numel()
    lanes, unroll = form or default_form()
    first = HEADS_FIRST if heads_first_grid is None else heads_first_grid
    tables = meta.block_tables
    name = f"mha_decode_{kernels.SUFFIX[q.dtype]}_d{d}_l{lanes}_u{unroll}"
    kernels.launch(kernels.core_source(MHA_DECODE_CU), name, (hk, sd) if first else (sd, hk), (THREADS,),
                   (kernels.ptr(q), kernels.i64(q.stride(0)), kernels.ptr(k_cache), kernels.ptr(v_cache),
                    kernels.ptr(tables), kernels.i64(tables.stride(0)), kernels.ptr(meta.decode_seqs),
                    kernels.ptr(meta.decode_rows), kernels.ptr(meta.context_lens), kernels.ptr(out),
                    kernels.i64(out.stride(0)), kernels.f32(scale), kernels.i64(sliding_window or 1 << 40),
                    kernels.i32(hk), kernels.i32(meta.block_size), kernels.i32(first)),
                   q.device)
