"""Random ragged batches over a blocked KV cache, for comparing attention paths against the reference."""
from __future__ import annotations

import torch

from fastgen_core.layers.attention import AttentionMetadata


def random_case(num_decode: int, prefill_chunks: list[tuple[int, int]], hq: int, hk: int, d: int,
                block_size: int, device, dtype, seed: int = 0, max_ctx: int = 300):
    """(q, k_new, v_new, k_cache, v_cache, meta): ``num_decode`` single-token rows with random contexts, then
    one chunk per (start, length) in ``prefill_chunks``; K/V of the new rows already written to the cache."""
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randint(1, max_ctx, (num_decode,), generator=g).tolist() + [s + n for s, n in prefill_chunks]
    qlens = [1] * num_decode + [n for _, n in prefill_chunks]
    nblocks = [-(-c // block_size) for c in ctx]
    total = sum(nblocks) + 3
    perm = torch.randperm(total, generator=g).tolist()        # scattered, non-contiguous blocks
    tables, i = [], 0
    for nb in nblocks:
        tables.append(perm[i:i + nb])
        i += nb
    width = max(nblocks)
    k_cache = torch.randn(total, block_size, hk, d, generator=g).to(device, dtype)
    v_cache = torch.randn(total, block_size, hk, d, generator=g).to(device, dtype)
    T = sum(qlens)
    q = torch.randn(T, hq, d, generator=g).to(device, dtype)
    slots, qstart, row = [], [], 0
    for c, n, t in zip(ctx, qlens, tables):
        qstart.append(row)
        row += n
        slots += [t[p // block_size] * block_size + p % block_size for p in range(c - n, c)]
    slot_t = torch.tensor(slots, device=device)
    k_new = k_cache.view(-1, hk, d).index_select(0, slot_t).clone()
    v_new = v_cache.view(-1, hk, d).index_select(0, slot_t).clone()
    dev = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    meta = AttentionMetadata(
        slot_mapping=slot_t, block_tables=dev([t + [0] * (width - len(t)) for t in tables]), context_lens=dev(ctx),
        query_start=qstart, query_lens=qlens, context_lens_host=ctx, block_size=block_size,
        decode_rows=dev(qstart[:num_decode]) if num_decode else None,
        decode_seqs=dev(list(range(num_decode))) if num_decode else None,
        prefill_seqs=list(range(num_decode, len(ctx))), max_decode_context=max(ctx[:num_decode], default=0))
    return q, k_new, v_new, k_cache, v_cache, meta
