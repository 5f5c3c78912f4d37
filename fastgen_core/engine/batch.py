"""Ragged batch -> tensors: token ids, positions, KV slots, block tables and which rows are sampled."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layers.attention import AttentionMetadata, ForwardContext
from .scheduler import ScheduledBatch


@dataclass
class PreparedBatch:
    input_ids: torch.Tensor        # [T]
    ctx: ForwardContext
    logits_rows: torch.Tensor      # [n_sampled] rows whose logits are needed (last token of sampled chunks)
    sampled_chunks: list[int]      # host: which chunks are sampled, in logits_rows order


def prepare_batch(batch: ScheduledBatch, block_size: int, kv_caches, device: torch.device) -> PreparedBatch:
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    query_start, query_lens, context_lens, tables = [], [], [], []
    logits_rows, sampled, decode_rows, decode_seqs, prefill_seqs = [], [], [], [], []
    max_decode_ctx = 0
    for s, c in enumerate(batch.chunks):
        seq = c.seq
        row0 = len(ids)
        ids.extend(seq.token_slice(c.start, c.start + c.length))
        bt = seq.block_table
        rng = range(c.start, c.start + c.length)
        positions.extend(rng)
        slots.extend([bt[pos // block_size] * block_size + pos % block_size for pos in rng])
        ctx_len = c.start + c.length
        query_start.append(row0)
        query_lens.append(c.length)
        context_lens.append(ctx_len)
        tables.append(bt)
        if c.length == 1:
            decode_rows.append(row0)
            decode_seqs.append(s)
            max_decode_ctx = max(max_decode_ctx, ctx_len)
        else:
            prefill_seqs.append(s)
        if c.sample:
            logits_rows.append(row0 + c.length - 1)
            sampled.append(s)
    width = max(len(t) for t in tables)
    flat_tables = [b for t in tables for b in t + [0] * (width - len(t))]
    # one host buffer, one (pinned, asynchronous) copy: no per-tensor H2D transfer and no device sync
    parts = [ids, positions, slots, context_lens, logits_rows, decode_rows, decode_seqs, flat_tables]
    host = torch.tensor([x for p in parts for x in p], dtype=torch.long)
    if device.type == "cuda":
        host = host.pin_memory()
    (ids_t, pos_t, slots_t, ctx_t, logits_t, drows_t, dseqs_t,
     tables_t) = host.to(device, non_blocking=True).split([len(p) for p in parts])
    meta = AttentionMetadata(
        slot_mapping=slots_t,
        block_tables=tables_t.view(len(tables), width),
        context_lens=ctx_t,
        query_start=query_start,
        query_lens=query_lens,
        context_lens_host=context_lens,
        block_size=block_size,
        decode_rows=drows_t if decode_rows else None,
        decode_seqs=dseqs_t if decode_rows else None,
        prefill_seqs=prefill_seqs,
        max_decode_context=max_decode_ctx,
    )
    ctx = ForwardContext(positions=pos_t, attn=meta, kv_caches=kv_caches)
    return PreparedBatch(ids_t, ctx, logits_t, sampled)
