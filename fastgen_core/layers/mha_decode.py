"""Decode attention of many sequences without GQA as a CuPy kernel on the CUDA cores (kernels/mha_decode.cu).

The Triton kernel (``paged_decode``) scores a decode on the tensor cores, whose smallest tile pads a query row
to 16 and Phi-2's head_dim 80 to 128; with one query head per KV head (Phi-2, Llama-2-7B, OPT) that is 16 x 1.6
times the products a key needs, and Phi-2's decode attention ran at 3.3 TB/s against Llama-2-7B's 4.2 (Speed
IX). This kernel spends head_dim products and one exp2 a key. That alone read Phi-2's cache 3% faster; with
a sequence's heads side by side on the grid (``heads_first``), 13% faster (Speed X). ``paged_decode`` runs it
for steps with at least ``MIN_PROGRAMS`` (sequence, head) pairs when ``fits`` (below that the Triton kernel's
context splits keep the GPU busy). ``FASTGEN_KERNELS_OFF=mha_decode`` switches it off; the reference is
``attention.paged_attention_ref``, and tests/gpu/test_attention_gpu.py compares the two.
"""
from __future__ import annotations

import functools
import os

import torch

from .. import kernels

MHA_DECODE_CU = "mha_decode.cu"
THREADS = 128
MIN_PROGRAMS = 256        # as paged_decode.num_splits: from here on the step needs no context splits
HEAD_DIMS = (64, 80, 96, 128)     # compiled
FASTER_HEAD_DIMS = (64, 80)       # taken at any number of programs (``fits``)
FORMS = ((4, 4), (4, 1))      # (lanes a key, keys a lane loads at once) compiled; the first is the default
MAX_PROGRAMS_128 = 512        # head_dim 128 from here on: the Triton kernel ties or wins (Speed X)


@functools.lru_cache(maxsize=None)
def form_override() -> tuple[int, int] | None:
    """``FASTGEN_MHA_DECODE_FORM=lanes,unroll`` (A/B runs; one of ``FORMS``), else None."""
    value = os.environ.get("FASTGEN_MHA_DECODE_FORM", "")
    if not value:
        return None
    try:
        form = tuple(int(x) for x in value.split(","))
    except ValueError:
        form = None
    if form not in FORMS:
        raise ValueError(f"FASTGEN_MHA_DECODE_FORM must be one of {', '.join(f'{a},{b}' for a, b in FORMS)}; "
                         f"got {value!r}")
    return form


@functools.lru_cache(maxsize=None)
def heads_first() -> bool:
    """Whether decode kernels put the heads on the grid's first axis (the default; ``FASTGEN_DECODE_HEADS_FIRST=0``
    switches it off for A/B runs): the blocks that run side by side are then one sequence's heads, which read
    adjacent rows of the same cache slots, instead of one head of many sequences. On an H200 (Speed X) that took
    Phi-2's decode attention at 128 x 1200 from 0.486 to 0.429 ms with this kernel (form (4, 4)) and Triton's
    from 0.484 to 0.469 ms; Llama-2-7B's is unchanged."""
    value = os.environ.get("FASTGEN_DECODE_HEADS_FIRST", "1")
    if value not in ("0", "1"):
        raise ValueError(f"FASTGEN_DECODE_HEADS_FIRST must be 0 or 1, got {value!r}")
    return value == "1"


def fits(hq: int, hk: int, d: int, dtype: torch.dtype, programs: int) -> bool:
    """Whether a decode step of ``programs`` (sequence, head) pairs with these heads takes the kernel: no GQA,
    16-bit, at least ``MIN_PROGRAMS``, and a head_dim where it beat the Triton kernel on the H200 (Speed X,
    heads first): 80 (Phi-2 128 x 1200: 0.415 against 0.460 ms) and 64 (64 x 1200: 0.162 against 0.175); 128
    only below ``MAX_PROGRAMS_128`` (8 x 4000: 0.137 against 0.162; at 16 x 1200 and 64 x 1200 it tied or lost
    by 1%). Not 96, compiled and tested but slower (64 x 1200: 0.259 against 0.252)."""
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
    """(4, 4), the fastest form at every Phi-2 shape of the H200 sweep with the heads first (docs/performance.md,
    Speed X: 0.044 against 0.057 ms at 8 x 1200, 0.429 against 0.441 at 128 x 1200); (4, 1), with fewer
    registers, won at head_dim 128 from 512 programs, where the kernel is not used. ``FASTGEN_MHA_DECODE_FORM``
    overrides it."""
    return form_override() or FORMS[0]


def mha_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta, scale: float,
               sliding_window: int | None, out: torch.Tensor, form: tuple[int, int] | None = None,
               heads_first_grid: bool | None = None) -> None:
    """Write attention for the decode rows of ``q`` [T, H, D] into ``out`` (same shape): one launch, a block
    per (decode row, head). ``form``: (lanes a key, keys a lane loads at once), one of ``FORMS``;
    ``heads_first_grid``: the heads on the grid's first axis (``heads_first()``)."""
    if form is not None and tuple(form) not in FORMS:
        raise ValueError(f"mha_decode form {tuple(form)} is not compiled; allowed: {FORMS}")
    hk, d = k_cache.shape[-2:]
    sd = meta.decode_rows.numel()
    lanes, unroll = form or default_form()
    first = heads_first() if heads_first_grid is None else heads_first_grid
    tables = meta.block_tables
    name = f"mha_decode_{kernels.SUFFIX[q.dtype]}_d{d}_l{lanes}_u{unroll}"
    kernels.launch(kernels.core_source(MHA_DECODE_CU), name, (hk, sd) if first else (sd, hk), (THREADS,),
                   (kernels.ptr(q), kernels.i64(q.stride(0)), kernels.ptr(k_cache), kernels.ptr(v_cache),
                    kernels.ptr(tables), kernels.i64(tables.stride(0)), kernels.ptr(meta.decode_seqs),
                    kernels.ptr(meta.decode_rows), kernels.ptr(meta.context_lens), kernels.ptr(out),
                    kernels.i64(out.stride(0)), kernels.f32(scale), kernels.i64(sliding_window or 1 << 40),
                    kernels.i32(hk), kernels.i32(meta.block_size), kernels.i32(first)),
                   q.device)
