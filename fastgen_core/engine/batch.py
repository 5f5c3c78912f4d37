"""Ragged batch -> tensors: token ids, positions, KV slots, block tables and which rows are sampled."""
from __future__ import annotations

from array import array
from dataclasses import dataclass, field

import torch

from ..layers.attention import AttentionMetadata, ForwardContext
from .scheduler import ScheduledBatch


@dataclass
class PreparedBatch:
    input_ids: torch.Tensor        # [T]
    ctx: ForwardContext
    logits_rows: torch.Tensor      # [n_sampled] rows whose logits are needed (last token of sampled chunks)
    sampled_chunks: list[int]      # host: which chunks are sampled, in logits_rows order


@dataclass
class BatchPlan:
    """A step's batch as host lists: what the scheduler decided, with no Sequence objects, so that rank 0
    can send it to tensor-parallel workers (which hold no sequences) and every rank builds the same tensors."""

    ids: list[int]
    positions: list[int]
    slots: list[int]
    query_start: list[int]
    query_lens: list[int]
    context_lens: list[int]
    flat_tables: list[int]         # block tables, each padded with 0 to ``width``
    width: int
    logits_rows: list[int]
    sampled: list[int]
    decode_rows: list[int]
    decode_seqs: list[int]
    prefill_seqs: list[int]
    max_decode_ctx: int
    # (chunk, first row, rows) of prompt positions whose next-token logits are wanted (prompt_logprobs)
    prompt_rows: list[tuple[int, int, int]] = field(default_factory=list)


def plan_batch(batch: ScheduledBatch, block_size: int) -> BatchPlan:
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    query_start, query_lens, context_lens, tables = [], [], [], []
    logits_rows, sampled, decode_rows, decode_seqs, prefill_seqs = [], [], [], [], []
    prompt_rows: list[tuple[int, int, int]] = []
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
        if getattr(seq.params, "prompt_logprobs", None) is not None:
            # position p's logits score prompt token p + 1: rows for p < len(prompt) - 1
            n = min(c.start + c.length, len(seq.prompt_token_ids) - 1) - c.start
            if n > 0:
                prompt_rows.append((s, row0, n))
    width = max(len(t) for t in tables)
    flat_tables = [b for t in tables for b in t + [0] * (width - len(t))]
    return BatchPlan(ids, positions, slots, query_start, query_lens, context_lens, flat_tables, width,
                     logits_rows, sampled, decode_rows, decode_seqs, prefill_seqs, max_decode_ctx, prompt_rows)


def int64_array(*parts, align: int = 1) -> array:
    """The int sequences ``parts`` end to end in one int64 array (a tensor reads it ~3x faster than
    torch.tensor reads a list), each padded with zeros to a multiple of ``align`` elements."""
    packed = array("q")
    for p in parts:
        packed += array("q", p)
        if len(p) % align:
            packed += array("q", bytes(8 * (align - len(p) % align)))
    return packed


# Every part of a step's packed buffer starts on a 16-byte boundary. Triton specialises a kernel on whether
# each pointer argument is 16-byte aligned: with parts at arbitrary offsets, the attention kernels met new
# alignment patterns in the middle of serving and compiled again (seconds each, in the middle of requests).
PART_ALIGN = 2            # int64 elements


def split_aligned(t: torch.Tensor, sizes: list[int], align: int = PART_ALIGN) -> list[torch.Tensor]:
    """The parts of ``t`` that ``int64_array(..., align=align)`` packed, of lengths ``sizes``."""
    out, off = [], 0
    for n in sizes:
        out.append(t[off:off + n])
        off += -(-n // align) * align
    return out


def host_tensor(packed: array, device: torch.device) -> torch.Tensor:
    """``packed`` as a CPU int64 tensor, in pinned memory when it is bound for CUDA (so that its one copy to
    the device is asynchronous)."""
    host = torch.frombuffer(packed, dtype=torch.long)
    return host.pin_memory() if device.type == "cuda" else host


def plan_to_device(plan: BatchPlan, block_size: int, kv_caches, device: torch.device) -> PreparedBatch:
    # one host buffer, one (pinned, asynchronous) copy: no per-tensor H2D transfer and no device sync
    parts = [plan.ids, plan.positions, plan.slots, plan.context_lens, plan.logits_rows, plan.decode_rows,
             plan.decode_seqs, plan.flat_tables]
    host = host_tensor(int64_array(*parts, align=PART_ALIGN), device)
    (ids_t, pos_t, slots_t, ctx_t, logits_t, drows_t, dseqs_t,
     tables_t) = split_aligned(host.to(device, non_blocking=True), [len(p) for p in parts])
    decodes = bool(plan.decode_rows)
    meta = AttentionMetadata(
        slot_mapping=slots_t,
        block_tables=tables_t.view(len(plan.context_lens), plan.width),
        context_lens=ctx_t,
        query_start=plan.query_start,
        query_lens=plan.query_lens,
        context_lens_host=plan.context_lens,
        block_size=block_size,
        decode_rows=drows_t if decodes else None,
        decode_seqs=dseqs_t if decodes else None,
        prefill_seqs=plan.prefill_seqs,
        max_decode_context=plan.max_decode_ctx,
    )
    ctx = ForwardContext(positions=pos_t, attn=meta, kv_caches=kv_caches)
    return PreparedBatch(ids_t, ctx, logits_t, plan.sampled)


def prepare_batch(batch: ScheduledBatch, block_size: int, kv_caches, device: torch.device) -> PreparedBatch:
    return plan_to_device(plan_batch(batch, block_size), block_size, kv_caches, device)


def feed_from_device(input_ids: torch.Tensor, fed: tuple) -> None:
    """input_ids[rows] = tokens[indices]: tokens sampled on the device by the step before, never read back."""
    rows, tokens, indices = fed
    dev = input_ids.device
    host = host_tensor(int64_array(rows, indices), dev).view(2, len(rows))      # one host buffer, one copy
    r, i = host.to(dev, non_blocking=True)
    input_ids.index_copy_(0, r, tokens.index_select(0, i))
