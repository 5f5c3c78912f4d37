"""Attention over the blocked KV cache: metadata, the pure-torch reference, and the module families use.

The reference is the oracle the CUDA kernels are tested against, and the CPU path. On CUDA,
``paged_attention_cuda`` does the same with faster kernels (see its docstring). It handles a ragged
batch as two groups: all single-token rows (decodes) at once, padded to the longest context, and each
multi-token chunk (prompt pieces) on its own with a causal mask offset by what is already cached.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .. import kernels

_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass
class AttentionMetadata:
    """Where every token of the ragged batch goes. Host lists for control flow, tensors for indexing."""

    slot_mapping: torch.Tensor          # [T] int64: cache slot (block * block_size + offset) of each token
    block_tables: torch.Tensor          # [S, max_blocks] int64, padded with 0
    context_lens: torch.Tensor          # [S] int64: tokens cached after this step, per sequence
    query_start: list[int]              # host: first row of each sequence in the batch
    query_lens: list[int]               # host
    context_lens_host: list[int]        # host
    block_size: int
    decode_rows: torch.Tensor | None = None      # [Sd] rows of single-token sequences
    decode_seqs: torch.Tensor | None = None      # [Sd] their sequence index (into block_tables)
    prefill_seqs: list[int] = field(default_factory=list)   # host: sequences with a multi-token chunk
    max_decode_context: int = 0
    memo: dict = field(default_factory=dict, repr=False)   # per-step values every layer reuses (GPU path)


@dataclass
class ForwardContext:
    """Everything a forward pass needs besides the token ids: passed explicitly, never global."""

    positions: torch.Tensor                                  # [T]
    attn: AttentionMetadata
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]       # per layer: K, V [blocks, block_size, Hk, D]


def write_kv_ref(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slot_mapping: torch.Tensor) -> None:
    """Scatter this step's K/V rows [T, Hk, D] into their cache slots."""
    hk, d = k.shape[-2:]
    k_cache.view(-1, hk, d).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, hk, d).index_copy_(0, slot_mapping, v.to(v_cache.dtype))


def _sdpa(q, k, v, mask, scale):
    """q [B, Hq, Lq, D], k/v [B, Hk, Lk, D], mask [B, 1, Lq, Lk] bool (True = attend)."""
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def paged_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                        scale: float, sliding_window: int | None = None) -> torch.Tensor:
    """q [T, Hq, D] -> out [T, Hq, D], reading K/V (already written) from the blocked cache."""
    out = torch.empty_like(q)
    if meta.decode_rows is not None and meta.decode_rows.numel():
        _decode_ref(q, k_cache, v_cache, meta, out, scale, sliding_window)
    _prefill_ref(q, k_cache, v_cache, meta, out, scale, sliding_window, meta.prefill_seqs)
    return out


def _decode_ref(q, k_cache, v_cache, meta: AttentionMetadata, out, scale, sliding_window) -> None:
    """The reference for the decode rows: every sequence's K/V gathered, padded to the longest context."""
    hk, d = k_cache.shape[-2:]
    bs = meta.block_size
    L = meta.max_decode_context
    nb = -(-L // bs)
    tables = meta.block_tables.index_select(0, meta.decode_seqs)[:, :nb]          # [Sd, nb]
    k = k_cache[tables].reshape(len(tables), nb * bs, hk, d)[:, :L]
    v = v_cache[tables].reshape(len(tables), nb * bs, hk, d)[:, :L]
    ctx = meta.context_lens.index_select(0, meta.decode_seqs).unsqueeze(1)       # [Sd, 1]
    kpos = torch.arange(L, device=q.device).unsqueeze(0)
    mask = kpos < ctx
    if sliding_window:
        mask &= kpos > ctx - 1 - sliding_window
    qd = q.index_select(0, meta.decode_rows).unsqueeze(2)                          # [Sd, Hq, 1, D]
    o = _sdpa(qd, k.transpose(1, 2).to(q.dtype), v.transpose(1, 2).to(q.dtype), mask[:, None, None, :], scale)
    out.index_copy_(0, meta.decode_rows, o.squeeze(2))


def _prefill_ref(q, k_cache, v_cache, meta: AttentionMetadata, out, scale, sliding_window, seqs) -> None:
    """The reference for the prompt chunks of ``seqs``: each with a causal mask offset by what is cached."""
    hk, d = k_cache.shape[-2:]
    bs = meta.block_size
    for s in seqs:
        start, n, ctx = meta.query_start[s], meta.query_lens[s], meta.context_lens_host[s]
        nb = -(-ctx // bs)
        blocks = meta.block_tables[s, :nb]
        k = k_cache[blocks].reshape(nb * bs, hk, d)[:ctx].transpose(0, 1).unsqueeze(0)
        v = v_cache[blocks].reshape(nb * bs, hk, d)[:ctx].transpose(0, 1).unsqueeze(0)
        qpos = torch.arange(ctx - n, ctx, device=q.device).unsqueeze(1)
        kpos = torch.arange(ctx, device=q.device).unsqueeze(0)
        mask = kpos <= qpos
        if sliding_window:
            mask &= kpos > qpos - sliding_window
        qs = q[start:start + n].transpose(0, 1).unsqueeze(0)                            # [1, Hq, n, D]
        o = _sdpa(qs, k.to(q.dtype), v.to(q.dtype), mask[None, None], scale)
        out[start:start + n] = o[0].transpose(0, 1)


def exact_whole_prompts(meta: AttentionMetadata, sliding_window: int | None) -> tuple[list[int], list[int]]:
    """(whole, rest): the prompt chunks of the step that are whole prompts no sliding window cuts (start 0), what an
    exact step sends through SDPA as transformers computes a prompt, and the other chunks. The same for every layer
    of the step (kept in ``meta.memo``)."""
    key = ("exact-whole", sliding_window)
    if key not in meta.memo:
        whole = [s for s in meta.prefill_seqs if meta.context_lens_host[s] == meta.query_lens[s]
                 and not (sliding_window and meta.context_lens_host[s] > sliding_window)]
        meta.memo[key] = whole, [s for s in meta.prefill_seqs if s not in whole]
    return meta.memo[key]


def _prefill_cuda(q, k_new, v_new, k_cache, v_cache, meta: AttentionMetadata, out, scale, sliding_window,
                  seqs: list[int] | None = None):
    """Each multi-token chunk (of ``seqs``, default all) through SDPA (flash when the chunk is a whole prompt,
    else a masked kernel).

    A whole prompt (start 0) attends only to its own K/V: this step's rows (``k_new``/``v_new``), or, when the
    fused rotary kernel wrote them straight into the cache, those rows read back by slot; a later chunk gathers
    its earlier context from the blocks (a small copy next to the prompt's FLOPs).
    """
    hk, d = k_cache.shape[-2:]
    bs = meta.block_size
    hq = q.shape[1]
    for s in meta.prefill_seqs if seqs is None else seqs:
        start, n, ctx = meta.query_start[s], meta.query_lens[s], meta.context_lens_host[s]
        qs = q[start:start + n].transpose(0, 1).unsqueeze(0)                              # [1, Hq, n, D]
        windowed = bool(sliding_window) and ctx > sliding_window
        if ctx == n and not windowed:
            if k_new is not None:
                k, v = k_new[start:start + n], v_new[start:start + n]
            else:             # the fused rotary kernel wrote this step's K/V straight into the cache: read them back
                slots = meta.slot_mapping[start:start + n]
                k, v = k_cache.view(-1, hk, d).index_select(0, slots), v_cache.view(-1, hk, d).index_select(0, slots)
            o = F.scaled_dot_product_attention(qs, k.transpose(0, 1).unsqueeze(0).to(q.dtype),
                                               v.transpose(0, 1).unsqueeze(0).to(q.dtype), is_causal=True,
                                               scale=scale, enable_gqa=hk != hq)
        else:
            key = ("prefill", s, sliding_window)
            if key not in meta.memo:          # the same for every layer of this step
                nb = -(-ctx // bs)
                qpos = torch.arange(ctx - n, ctx, device=q.device).unsqueeze(1)
                kpos = torch.arange(ctx, device=q.device).unsqueeze(0)
                mask = kpos <= qpos
                if sliding_window:
                    mask &= kpos > qpos - sliding_window
                meta.memo[key] = (nb, meta.block_tables[s, :nb], mask[None, None])
            nb, blocks, mask = meta.memo[key]
            k = k_cache[blocks].reshape(nb * bs, hk, d)[:ctx].transpose(0, 1).unsqueeze(0)
            v = v_cache[blocks].reshape(nb * bs, hk, d)[:ctx].transpose(0, 1).unsqueeze(0)
            o = _sdpa(qs, k.to(q.dtype), v.to(q.dtype), mask, scale)
        out[start:start + n] = o[0].transpose(0, 1)


def _decode_torch(q, k_cache, v_cache, meta: AttentionMetadata, out, scale, sliding_window):
    """All single-token rows at once, padded to the longest context (fallback when Triton is absent).

    GQA without copying K/V per query head: the Hq/Hk query heads that share a KV head become the
    "query length" of one SDPA row, which is exact for a decode (one query position, no causality).
    """
    hk, d = k_cache.shape[-2:]
    bs = meta.block_size
    L = meta.max_decode_context
    nb = -(-L // bs)
    tables = meta.block_tables.index_select(0, meta.decode_seqs)[:, :nb]
    sd = tables.shape[0]
    k = k_cache[tables].reshape(sd, nb * bs, hk, d)[:, :L].transpose(1, 2)               # [Sd, Hk, L, D]
    v = v_cache[tables].reshape(sd, nb * bs, hk, d)[:, :L].transpose(1, 2)
    ctx = meta.context_lens.index_select(0, meta.decode_seqs).unsqueeze(1)
    kpos = torch.arange(L, device=q.device).unsqueeze(0)
    mask = kpos < ctx
    if sliding_window:
        mask &= kpos > ctx - 1 - sliding_window
    qd = q.index_select(0, meta.decode_rows).view(sd, hk, -1, d)                          # [Sd, Hk, G, D]
    o = F.scaled_dot_product_attention(qd, k.to(q.dtype), v.to(q.dtype), attn_mask=mask[:, None, None, :],
                                       scale=scale)
    out.index_copy_(0, meta.decode_rows, o.reshape(sd, -1, d))


def paged_attention_cuda(q, k_cache, v_cache, meta: AttentionMetadata, scale: float,
                         sliding_window: int | None = None, k_new=None, v_new=None) -> torch.Tensor:
    """The GPU path: same contract as ``paged_attention_ref`` (K/V already written), the kernels the active plan
    keeps for ``decode_attention`` and ``prefill_attention`` (ops/plan.py), tried in its order.

    Decodes: the Triton paged-decode kernel (which hands steps ``mha_decode`` takes to that CUDA-core kernel),
    else ``mha_decode`` alone, else the padded torch version, else the reference. Prompt chunks: whole prompts
    through SDPA's flash kernel where the plan keeps ``exact_sdpa`` (a family's choice), the rest through the
    Triton paged-prefill kernel, else SDPA (``k_new``/``v_new``, this step's K/V rows [T, Hk, D], let it skip
    reading a fresh prompt back), else the reference.
    """
    from . import mha_decode, paged_decode, paged_prefill
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if meta.decode_rows is not None and meta.decode_rows.numel():
        if kernels.allows("paged_decode") and paged_decode.available():
            paged_decode.paged_decode(q, k_cache, v_cache, meta, scale, sliding_window, out)
        elif mha_decode.usable(q, k_cache, v_cache, meta, out):
            mha_decode.mha_decode(q, k_cache, v_cache, meta, scale, sliding_window, out)
        elif kernels.allows("padded_sdpa"):
            _decode_torch(q, k_cache, v_cache, meta, out, scale, sliding_window)
        else:
            _decode_ref(q, k_cache, v_cache, meta, out, scale, sliding_window)
    if not meta.prefill_seqs:
        return out
    whole, rest = exact_whole_prompts(meta, sliding_window) if kernels.allows("exact_sdpa") else ([], None)
    if not whole:
        rest = None              # every chunk (the kernels' own per-step bookkeeping)
    else:                    # whole prompts through SDPA's flash kernel, as transformers attends them
        with sdpa_kernel(_SDPA_BACKENDS):
            _prefill_cuda(q, k_new, v_new, k_cache, v_cache, meta, out, scale, sliding_window, whole)
        if not rest:
            return out
    if kernels.allows("paged_prefill") and paged_prefill.available():
        paged_prefill.paged_prefill(q, k_cache, v_cache, meta, scale, sliding_window, out, seqs=rest)
    elif kernels.allows("sdpa"):
        # not cuDNN: it builds a new plan for every (chunk, context) shape, over a millisecond of host time a call
        with sdpa_kernel(_SDPA_BACKENDS):
            _prefill_cuda(q, k_new, v_new, k_cache, v_cache, meta, out, scale, sliding_window, rest)
    else:
        _prefill_ref(q, k_cache, v_cache, meta, out, scale, sliding_window, meta.prefill_seqs if rest is None else rest)
    return out


class PagedAttention(nn.Module):
    """Writes this step's K/V into layer ``layer_idx``'s cache and attends over everything cached."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, layer_idx: int,
                 scale: float | None = None, sliding_window: int | None = None):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_attention_heads ({num_heads}) must be a multiple of num_key_value_heads "
                             f"({num_kv_heads})")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.layer_idx = layer_idx
        self.scale = scale if scale is not None else head_dim ** -0.5
        self.sliding_window = sliding_window

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """q [T, Hq*D] or [T, Hq, D]; k, v [T, Hk, D] -> [T, Hq*D]: writes k, v into the cache, then attends."""
        t = q.shape[0]
        k_cache, v_cache = ctx.kv_caches[self.layer_idx]
        write_kv_ref(k.view(t, self.num_kv_heads, self.head_dim), v.view(t, self.num_kv_heads, self.head_dim),
                     k_cache, v_cache, ctx.attn.slot_mapping)
        return self.attend(q, ctx, k, v)

    def attend(self, q: torch.Tensor, ctx: ForwardContext, k_new=None, v_new=None) -> torch.Tensor:
        """Attention of q [T, Hq, D] (rows may be strided) over the cache, this step's K/V already in it
        (``k_new``/``v_new``: the same rows again, which the SDPA fallback uses for fresh prompts)."""
        t = q.shape[0]
        q = q.view(t, self.num_heads, self.head_dim)
        k_cache, v_cache = ctx.kv_caches[self.layer_idx]
        if q.is_cuda:
            out = paged_attention_cuda(q, k_cache, v_cache, ctx.attn, self.scale, self.sliding_window,
                                       None if k_new is None else k_new.view(t, self.num_kv_heads, self.head_dim),
                                       None if v_new is None else v_new.view(t, self.num_kv_heads, self.head_dim))
        else:
            out = paged_attention_ref(q, k_cache, v_cache, ctx.attn, self.scale, self.sliding_window)
        return out.reshape(t, self.num_heads * self.head_dim)
