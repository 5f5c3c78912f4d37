"""Decode attention of a few sequences as one CuPy kernel (kernels/decode_attention.cu): rotary on q and on
this step's k, the K/V write into the cache, split-K attention over the blocks and the merge of the splits.

With one to a few sequences a decode layer's attention is bound by latency, not by the bytes it reads: the
unfused path (``rotary_kv_write``, then the Triton split decode and its merge) takes three launches a layer,
each a chain of dependent memory round trips. ``fused_decode_attention`` is what ``RotaryAttention`` tries
first when the kernel plan keeps ``fused_rotary_decode`` (an opt-in kernel of ``decode_attention``: it is
faster than the unfused path only for some models at one sequence; docs/performance.md has the A/B); it answers
None (and the unfused path runs) unless the step is decode-only, has fewer than ``MANY_PROGRAMS`` (sequence, KV
head) pairs, runs on CUDA with the CuPy kernels on, and the shapes fit the kernel.

The reference is ``fused_decode_attention_ref``: ``rotary_kv_write_ref`` then ``paged_attention_ref``.
"""
from __future__ import annotations

import torch

from .. import kernels
from ..ops import MANY_PROGRAMS
from .attention import AttentionMetadata, paged_attention_ref
from .rotary import RotaryEmbedding, rotary_kv_write_ref

DECODE_ATTENTION_CU = "decode_attention.cu"
MAX_PROGRAMS = MANY_PROGRAMS     # sequences x KV heads: from here on the unsplit Triton kernel has programs enough
THREADS = 128
TARGET_BLOCKS = 512       # about one wave of the kernel's blocks on an H200 (132 SMs x 4 resident blocks)


def num_splits(programs: int) -> int:
    """Context splits for ``programs`` = sequences x KV heads: about TARGET_BLOCKS blocks in all, at most 32.
    It depends on the batch shape only, so a CUDA graph captured for a batch size serves every context."""
    return max(1, min(32, 1 << max(0, (TARGET_BLOCKS // programs - 1).bit_length())))


def fits(hq: int, hk: int, d: int) -> bool:
    """Whether the kernel takes these heads (its limits: see decode_attention.cu)."""
    g = hq // hk
    return hq % hk == 0 and d % 8 == 0 and d <= 256 and g <= 8 and g * d <= 1024 and (g * d // 8) <= THREADS


def fused_decode_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                               rotary: RotaryEmbedding | None, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               meta: AttentionMetadata, scale: float,
                               sliding_window: int | None = None) -> torch.Tensor:
    """q [T, Hq, D], k/v [T, Hk, D] of a decode-only step -> attention [T, Hq * D]; K/V written to the cache."""
    q = rotary_kv_write_ref(q, k, v, positions, rotary, k_cache, v_cache, meta.slot_mapping)
    return paged_attention_ref(q, k_cache, v_cache, meta, scale, sliding_window).reshape(q.shape[0], -1)


def _usable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata, k_cache) -> bool:
    t, hq, d = q.shape
    hk = k.shape[1]
    return (not meta.prefill_seqs and meta.decode_rows is not None and meta.decode_rows.numel() == t > 0
            and t * hk < MAX_PROGRAMS and fits(hq, hk, d)
            and kernels.use(q, "fused_rotary_decode")
            and k.dtype == v.dtype == k_cache.dtype == q.dtype and meta.block_tables.stride(1) == 1
            and all(x.dtype == torch.long for x in (meta.block_tables, meta.decode_rows, meta.decode_seqs,
                                                     meta.context_lens, meta.slot_mapping))
            and all(x.stride(-1) == 1 and x.stride(-2) == d for x in (q, k, v))
            and k_cache.is_contiguous())


def counters(owner, device: torch.device) -> torch.Tensor | None:
    """The merge's counters (MAX_PROGRAMS int32 zeros, one per (sequence, KV head)), kept on ``owner`` (a
    layer: layers run one after another on one stream, and each launch leaves them at zero again). Made
    outside CUDA-graph capture only (zeros made inside a capture are not zero until the first replay);
    None while capturing before they exist."""
    buf = getattr(owner, "_decode_counters", None)
    if buf is None or buf.device != device:
        if torch.cuda.is_current_stream_capturing():
            return None
        buf = torch.zeros(MAX_PROGRAMS, dtype=torch.int32, device=device)
        owner._decode_counters = buf
    return buf


def fused_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                           rotary: RotaryEmbedding | None, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           meta: AttentionMetadata, scale: float, sliding_window: int | None, owner,
                           splits: int | None = None) -> torch.Tensor | None:
    """``fused_decode_attention_ref`` as one launch, or None where the kernel does not apply (the caller then
    runs the unfused path). ``owner`` keeps the merge's counters (the calling layer); ``splits`` overrides
    ``num_splits`` (benchmarks, tests)."""
    if not q.is_cuda or positions.dtype != torch.long or not _usable(q, k, v, meta, k_cache):
        return None
    cnt = counters(owner, q.device)
    if cnt is None:
        return None
    t, hq, d = q.shape
    hk = k.shape[1]
    splits = splits or num_splits(t * hk)
    out = torch.empty(t, hq * d, dtype=q.dtype, device=q.device)
    part = torch.empty(t * hq * splits * (d + 1) if splits > 1 else 1, dtype=torch.float32, device=q.device)
    part_o, part_lse = part[:t * hq * splits * d], part[t * hq * splits * d:]
    rot = rotary.rotary_dim if rotary is not None else 0
    inv_freq = rotary.inv_freq_f32() if rotary is not None else None
    tables = meta.block_tables
    kernels.launch(kernels.core_source(DECODE_ATTENTION_CU), f"decode_attention_{kernels.SUFFIX[q.dtype]}",
                   (splits, hk, t), (THREADS,),
                   (kernels.ptr(q), kernels.i64(q.stride(0)), kernels.ptr(k), kernels.i64(k.stride(0)),
                    kernels.ptr(v), kernels.i64(v.stride(0)), kernels.ptr(k_cache), kernels.ptr(v_cache),
                    kernels.ptr(tables), kernels.i64(tables.stride(0)), kernels.ptr(meta.decode_seqs),
                    kernels.ptr(meta.decode_rows), kernels.ptr(meta.context_lens), kernels.ptr(positions),
                    kernels.ptr(meta.slot_mapping), kernels.ptr(inv_freq), kernels.ptr(out),
                    kernels.i64(out.stride(0)), kernels.ptr(part_o), kernels.ptr(part_lse), kernels.ptr(cnt),
                    kernels.f32(scale), kernels.i64(sliding_window or 1 << 40), kernels.i32(hq), kernels.i32(hk),
                    kernels.i32(d), kernels.i32(rot), kernels.i32(meta.block_size), kernels.i32(splits)),
                   q.device)
    return out
