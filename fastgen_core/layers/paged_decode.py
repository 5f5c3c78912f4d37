"""Triton kernel: decode attention read straight from the blocked KV cache (no gather, no padding copy).

One program per (decode sequence, KV head) handles the Hq/Hk query heads that share that KV head as the
rows of one small matrix, walks the sequence's blocks through its block table, and keeps an online
softmax (flash-decoding without the split). K/V bytes are read once: at large batch the decode step is
bound by reading the KV cache, and the torch fallback (gather into a padded copy, then SDPA) moves
them three times.

The pure-torch oracle is ``attention.paged_attention_ref``; tests/gpu compares the two. Triton is
imported lazily: without it (CPU machines, CI) ``available()`` is False and nothing here is touched. The kernel
plan's ``decode_attention`` operation decides whether it runs (attention.paged_attention_cuda asks).
"""
from __future__ import annotations

import functools

import torch

from .. import kernels
from ..ops import MANY_PROGRAMS
from . import mha_decode


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether Triton builds the decode kernel here."""
    return kernels.triton_builds(_kernel)


@functools.lru_cache(maxsize=None)
def _kernel():
    import triton
    import triton.language as tl

    # the block-table stride is the step's widest table (eager steps): left unspecialised, or every new
    # divisibility class of it would compile the kernel again in the middle of serving
    @triton.jit(do_not_specialize=["stride_table"])
    def _paged_decode(q_ptr, k_ptr, v_ptr, out_ptr, part_o_ptr, part_lse_ptr, tables_ptr, seqs_ptr, rows_ptr,
                      ctx_ptr, scale, window, stride_table, stride_q, stride_o, G, D,
                      HK: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
                      BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, IEEE: tl.constexpr,
                      HEADS_FIRST: tl.constexpr):
        if HEADS_FIRST:               # the grid's first axis the heads: a sequence's heads run side by side
            i = tl.program_id(1)
            h = tl.program_id(0)
        else:
            i = tl.program_id(0)      # decode row index
            h = tl.program_id(1)      # KV head
        sp = tl.program_id(2)         # split of the context (flash-decoding); SPLITS == 1: the whole of it
        seq = tl.load(seqs_ptr + i)
        row = tl.load(rows_ptr + i)
        ctx = tl.load(ctx_ptr + seq)
        offs_g = tl.arange(0, BLOCK_G)
        offs_d = tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        g_ok = offs_g < G
        d_ok = offs_d < D
        qh = h * G + offs_g                                         # query heads of this KV head
        q_rows = q_ptr + row * stride_q + qh[:, None] * D
        q = tl.load(q_rows + offs_d[None, :], mask=g_ok[:, None] & d_ok[None, :], other=0.0)
        m = tl.full((BLOCK_G,), float("-inf"), tl.float32)
        l = tl.zeros((BLOCK_G,), tl.float32)
        acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
        # sliding window: skip whole tiles before the window (no window is passed as a huge one)
        lo = tl.maximum(ctx - window, 0) // BLOCK_N * BLOCK_N
        hi = ctx
        if SPLITS > 1:                # this split's run of whole tiles; every tile holds a key it may see
            per = tl.cdiv(tl.cdiv(ctx - lo, BLOCK_N), SPLITS) * BLOCK_N
            lo = lo + sp * per
            hi = tl.minimum(lo + per, ctx)
        for n0 in range(lo, hi, BLOCK_N):
            tok = n0 + offs_n
            ok = (tok < ctx) & (tok >= ctx - window)
            blk = tl.load(tables_ptr + seq * stride_table + tok // BLOCK_SIZE, mask=tok < ctx, other=0)
            slot = blk * BLOCK_SIZE + tok % BLOCK_SIZE
            kv_off = slot[:, None] * (HK * D) + h * D + offs_d[None, :]
            kv_mask = ok[:, None] & d_ok[None, :]
            k = tl.load(k_ptr + kv_off, mask=kv_mask, other=0.0)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            s = s * scale
            s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(s - m_new[:, None])
            l = l * alpha + tl.sum(p, 1)
            v = tl.load(v_ptr + kv_off, mask=kv_mask, other=0.0)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m = m_new
        if SPLITS == 1:
            o_rows = out_ptr + row * stride_o + qh[:, None] * D
            tl.store(o_rows + offs_d[None, :], (acc / l[:, None]).to(out_ptr.dtype.element_ty),
                     mask=g_ok[:, None] & d_ok[None, :])
        else:                         # normalised partial output and its log-sum-exp, merged by _merge
            has = l > 0.0
            inv = 1.0 / tl.where(has, l, 1.0)
            lse = tl.where(has, m + tl.log(tl.where(has, l, 1.0)), float("-inf"))
            base = (i * HK * G + qh) * SPLITS + sp                  # [row, query head, split]
            tl.store(part_o_ptr + base[:, None] * D + offs_d[None, :], acc * inv[:, None],
                     mask=g_ok[:, None] & d_ok[None, :])
            tl.store(part_lse_ptr + base, lse, mask=g_ok)

    @triton.jit
    def _merge(out_ptr, part_o_ptr, part_lse_ptr, rows_ptr, stride_o, HQ, D,
               SPLITS: tl.constexpr, BLOCK_D: tl.constexpr):
        i = tl.program_id(0)
        h = tl.program_id(1)
        row = tl.load(rows_ptr + i)
        offs_s = tl.arange(0, SPLITS)
        offs_d = tl.arange(0, BLOCK_D)
        base = (i * HQ + h) * SPLITS
        lse = tl.load(part_lse_ptr + base + offs_s)
        big = tl.max(lse, 0)
        w = tl.exp(lse - big)                     # empty splits: exp(-inf) = 0
        o = tl.load(part_o_ptr + (base + offs_s)[:, None] * D + offs_d[None, :], mask=(offs_d < D)[None, :],
                    other=0.0)
        res = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)
        tl.store(out_ptr + row * stride_o + h * D + offs_d, res.to(out_ptr.dtype.element_ty), mask=offs_d < D)

    return _paged_decode, _merge


def _pow2(x: int, lo: int) -> int:
    return max(lo, 1 << (x - 1).bit_length())


def tile_config(programs: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages), from sweeps (tools/attention_bench.py): 64-key tiles read the cache
    faster than 32-key ones on Phi-2 and Llama-2-7B, two stages beat or tie three, and with few programs
    (sequences x KV heads) 128-key tiles keep more bytes in flight."""
    if dtype == torch.float32:               # fp32 tiles take twice the shared memory
        return 32, 4, 2
    return (128, 4, 3) if programs < 256 else (64, 4, 2)


def num_splits(programs: int) -> int:
    """Context splits (flash-decoding) for ``programs`` = sequences x KV heads: enough programs to fill the
    GPU's ~132 multiprocessors about twice when few sequences decode (batch 1: 32 heads -> 8 splits), none
    when there are plenty. It depends on the batch shape only, not on the context lengths, so a CUDA graph
    captured for a batch size serves every context."""
    if programs >= MANY_PROGRAMS:
        return 1
    return min(16, 1 << max(0, (256 // programs - 1).bit_length()))


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta, scale: float,
                 sliding_window: int | None, out: torch.Tensor, config: tuple | None = None,
                 splits: int | None = None, heads_first_grid: bool | None = None) -> None:
    """Write attention for the decode rows of ``q`` [T, Hq, D] into ``out`` (same shape).
    ``config``: (BLOCK_N, num_warps, num_stages) instead of the default; ``splits``: context splits instead
    of ``num_splits``' choice (1: none); ``heads_first_grid`` instead of ``mha_decode.HEADS_FIRST``. Without
    ``config`` and ``splits``, steps that ``mha_decode`` takes run its CUDA-core kernel instead."""
    if config is None and splits is None:
        if mha_decode.usable(q, k_cache, v_cache, meta, out):
            mha_decode.mha_decode(q, k_cache, v_cache, meta, scale, sliding_window, out,
                                  heads_first_grid=heads_first_grid)
            return
    hq, d = q.shape[1:]
    hk = k_cache.shape[-2]
    g = hq // hk
    sd = meta.decode_rows.numel()
    tables = meta.block_tables
    block_n, warps, stages = config or tile_config(sd * hk, q.dtype)
    splits = splits or num_splits(sd * hk)
    extra = {} if stages is None else {"num_stages": stages}
    decode, merge = _kernel()
    if splits > 1:
        part_o = torch.empty(sd, hq, splits, d, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(sd, hq, splits, dtype=torch.float32, device=q.device)
    else:
        part_o = part_lse = out                  # unused
    first = mha_decode.HEADS_FIRST if heads_first_grid is None else heads_first_grid
    decode[(hk, sd, splits) if first else (sd, hk, splits)](
        q, k_cache, v_cache, out, part_o, part_lse, tables, meta.decode_seqs, meta.decode_rows, meta.context_lens,
        float(scale), int(sliding_window or 1 << 30), tables.stride(0), q.stride(0), out.stride(0), g, d,
        HK=hk, BLOCK_SIZE=meta.block_size, BLOCK_G=_pow2(g, 16), BLOCK_D=_pow2(d, 16),
        BLOCK_N=block_n, SPLITS=splits, IEEE=q.dtype == torch.float32, HEADS_FIRST=first, num_warps=warps,
        **extra)
    if splits > 1:
        merge[(sd, hq)](out, part_o, part_lse, meta.decode_rows, out.stride(0), hq, d, SPLITS=splits,
                        BLOCK_D=_pow2(d, 16), num_warps=4)
