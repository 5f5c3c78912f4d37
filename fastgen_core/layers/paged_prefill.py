"""Triton kernel: attention of prompt chunks straight off the blocked KV cache (FlashAttention-2 style).

Every multi-token chunk of the ragged batch -- a fresh prompt, or a later chunk whose earlier context is
already cached -- goes through one launch. The chunk's rows are cut into *q-blocks* of ``BLOCK_M``
consecutive tokens (DeepSpeed-FastGen's "atoms"); one program per (q-block, query head) keeps its queries
in registers, walks the sequence's KV blocks through the block table in tiles of ``BLOCK_N`` keys with an
online softmax, and writes its rows of the output. Nothing is gathered or padded: K/V are read from the
cache where they lie, once per q-block.

Causality is bottom-right aligned: query row ``i`` of a chunk sits at position ``ctx - len + i`` and sees
keys ``j <= position`` (and ``j > position - window`` with a sliding window). Key tiles wholly before the
q-block's first position need no mask; only the tiles on the diagonal are masked.

The pure-torch oracle is ``attention.paged_attention_ref``; tests/gpu compares the two, and the CPU tests
run this kernel under Triton's interpreter (``TRITON_INTERPRET=1``) when Triton is installed.
The kernel plan's ``prefill_attention=sdpa`` sends prompt chunks through SDPA instead (A/B timing).
"""
from __future__ import annotations

import functools

import torch

from .. import kernels

LOG2E = 1.4426950408889634


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether Triton builds the prompt-chunk kernel here."""
    return kernels.triton_builds(_kernel)


@functools.lru_cache(maxsize=None)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["stride_table", "stride_q", "stride_o"])
    def _paged_prefill(q_ptr, k_ptr, v_ptr, out_ptr, tables_ptr, ctx_ptr, atoms_ptr,
                       qk_scale, window, stride_table, stride_q, stride_o,
                       G: tl.constexpr, D: tl.constexpr, HK: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
                       HAS_TAIL: tl.constexpr,
                       WINDOWED: tl.constexpr, IEEE: tl.constexpr):
        # head channels [0, BLOCK_D) (a power of two <= D) and, when D is not a power of two, a tail
        # [BLOCK_D, D) padded to BLOCK_T (HAS_TAIL): head_dim 80 is 64 + 16, not 128 with 48 padded channels
        a = tl.program_id(0)              # q-block ("atom")
        h = tl.program_id(1)              # query head
        kvh = h // G
        seq = tl.load(atoms_ptr + 4 * a)
        row0 = tl.load(atoms_ptr + 4 * a + 1)
        n = tl.load(atoms_ptr + 4 * a + 2)            # rows in this q-block (<= BLOCK_M)
        pos0 = tl.load(atoms_ptr + 4 * a + 3)         # position of its first row
        ctx = tl.load(ctx_ptr + seq)
        offs_m = tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        offs_t = BLOCK_D + tl.arange(0, BLOCK_T)
        t_ok = offs_t < D
        m_ok = offs_m < n
        qpos = pos0 + offs_m
        q_rows = q_ptr + (row0 + offs_m)[:, None] * stride_q + h * D
        q = tl.load(q_rows + offs_d[None, :], mask=m_ok[:, None], other=0.0)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        if HAS_TAIL:
            q_t = tl.load(q_rows + offs_t[None, :], mask=m_ok[:, None] & t_ok[None, :], other=0.0)
            acc_t = tl.zeros((BLOCK_M, BLOCK_T), tl.float32)
        table = tables_ptr + seq * stride_table
        hi = tl.minimum(ctx, pos0 + n)                # keys past the last row's position are never seen
        lo = 0
        if WINDOWED:
            lo = tl.maximum(pos0 - window + 1, 0) // BLOCK_N * BLOCK_N
        # tiles that end at or before the first row's position are visible to every row: no causal mask
        full = (pos0 + 1) // BLOCK_N * BLOCK_N
        full = tl.maximum(tl.minimum(full, hi), lo)
        for n0 in range(lo, hi, BLOCK_N):
            tok = n0 + offs_n
            tok_ok = tok < hi
            blk = tl.load(table + tok // BLOCK_SIZE, mask=tok_ok, other=0)
            kv_rows = (blk * BLOCK_SIZE + tok % BLOCK_SIZE).to(tl.int64)[:, None] * (HK * D) + kvh * D
            k = tl.load(k_ptr + kv_rows + offs_d[None, :], mask=tok_ok[:, None], other=0.0)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            if HAS_TAIL:
                k_t = tl.load(k_ptr + kv_rows + offs_t[None, :], mask=tok_ok[:, None] & t_ok[None, :], other=0.0)
                if IEEE:
                    s += tl.dot(q_t, tl.trans(k_t), input_precision="ieee")
                else:
                    s += tl.dot(q_t, tl.trans(k_t))
            s = s * qk_scale
            if n0 >= full:                         # the diagonal: mask keys after each row's position
                ok = tok[None, :] <= qpos[:, None]
                if WINDOWED:
                    ok = ok & (tok[None, :] > qpos[:, None] - window)
                s = tl.where(ok, s, float("-inf"))
            elif WINDOWED:
                s = tl.where(tok[None, :] > qpos[:, None] - window, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # rows that have seen no key yet keep m = -inf; exp2(-inf - -inf) would be nan
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.math.exp2(m_i - m_safe)
            p = tl.math.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_ptr + kv_rows + offs_d[None, :], mask=tok_ok[:, None], other=0.0)
            pv = p.to(v.dtype)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(pv, v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(pv, v)
            if HAS_TAIL:
                v_t = tl.load(v_ptr + kv_rows + offs_t[None, :], mask=tok_ok[:, None] & t_ok[None, :], other=0.0)
                if IEEE:
                    acc_t = acc_t * alpha[:, None] + tl.dot(pv, v_t, input_precision="ieee")
                else:
                    acc_t = acc_t * alpha[:, None] + tl.dot(pv, v_t)
            m_i = m_new
        inv_l = 1.0 / tl.where(l_i == 0.0, 1.0, l_i)
        o_rows = out_ptr + (row0 + offs_m)[:, None] * stride_o + h * D
        tl.store(o_rows + offs_d[None, :], (acc * inv_l[:, None]).to(out_ptr.dtype.element_ty), mask=m_ok[:, None])
        if HAS_TAIL:
            tl.store(o_rows + offs_t[None, :], (acc_t * inv_l[:, None]).to(out_ptr.dtype.element_ty),
                     mask=m_ok[:, None] & t_ok[None, :])

    return _paged_prefill


def _pow2(x: int, lo: int) -> int:
    return max(lo, 1 << (x - 1).bit_length())


def head_split(d: int) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_T): the largest power of two <= d (at least 16), and the rest padded to a power of
    two (0 when d is one): 80 -> (64, 16), 96 -> (64, 32), 128 -> (128, 0)."""
    main = max(16, 1 << (d.bit_length() - 1))
    return main, (_pow2(d - main, 16) if d > main else 0)


def tile_config(head_dim: int, dtype: torch.dtype, longest_context: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages), from a sweep (tools/attention_bench.py, docs/performance.md):
    64 x 64 tiles everywhere but over long cached contexts with head_dim 128, where 128 x 128 tiles win."""
    if dtype == torch.float32:               # fp32 tiles take twice the registers and shared memory
        return 32, 32, 4, 1
    if head_dim > 128:
        return 64, 32, 4, 2
    if longest_context > 2048 and head_dim >= 128:
        return 128, 128, 8, 2
    return 64, 64, 4, 2


def atoms(meta, block_m: int, seqs: list[int] | None = None) -> list[int]:
    """The q-blocks of every multi-token chunk (of ``seqs``, default all): flat (sequence, first row, rows, first
    position) quadruples."""
    out: list[int] = []
    for s in meta.prefill_seqs if seqs is None else seqs:
        start, n, ctx = meta.query_start[s], meta.query_lens[s], meta.context_lens_host[s]
        for i in range(0, n, block_m):
            out += (s, start + i, min(block_m, n - i), ctx - n + i)
    return out


def paged_prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta, scale: float,
                  sliding_window: int | None, out: torch.Tensor, config: tuple | None = None,
                  seqs: list[int] | None = None) -> None:
    """Write attention for the prompt-chunk rows of ``q`` [T, Hq, D] (any row stride) into ``out``: every chunk's,
    or those of ``seqs`` (the same ones at every layer of a step). ``config``: (BLOCK_M, BLOCK_N, num_warps,
    num_stages) instead of ``tile_config``'s (tuning)."""
    hq, d = q.shape[1:]
    hk = k_cache.shape[-2]
    if q.stride(2) != 1 or q.stride(1) != d or out.stride(2) != 1 or out.stride(1) != d:
        raise ValueError("paged_prefill needs each row's heads contiguous ([T, Hq, D] with unit inner strides)")
    chunks = meta.prefill_seqs if seqs is None else seqs
    block_m, block_n, warps, stages = config or tile_config(d, q.dtype, max(
        meta.context_lens_host[s] for s in chunks))
    key = ("prefill-atoms", block_m) if seqs is None else ("prefill-atoms", block_m, tuple(seqs))
    if key not in meta.memo:                 # the same q-blocks for every layer of this step
        flat = atoms(meta, block_m, seqs)
        host = torch.tensor(flat, dtype=torch.int32)
        if q.is_cuda:
            host = host.pin_memory()
        meta.memo[key] = host.to(q.device, non_blocking=True)
    atom_t = meta.memo[key]
    n_atoms = atom_t.numel() // 4
    if not n_atoms:
        return
    tables = meta.block_tables
    main, tail = head_split(d)
    _kernel()[(n_atoms, hq)](
        q, k_cache, v_cache, out, tables, meta.context_lens, atom_t,
        float(scale) * LOG2E, int(sliding_window or 0), tables.stride(0), q.stride(0), out.stride(0),
        G=hq // hk, D=d, HK=hk, BLOCK_SIZE=meta.block_size, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_D=main, BLOCK_T=max(tail, 16), HAS_TAIL=tail > 0, WINDOWED=bool(sliding_window),
        IEEE=q.dtype == torch.float32,
        num_warps=warps, num_stages=stages)
