"""CUDA graphs for decode-only steps: one replay instead of hundreds of kernel launches.

A decode step does little GPU work per launch (a few sequences x one token), so eager execution is bound
by host time: a Phi-2 decode step's launches take several times its GPU work. Here each
decode batch size up to ``max_batch`` falls into a bucket (1, 2, 4, 8, then multiples of 8 to 64, then of
32), and one graph per bucket holds the whole forward plus the lm_head. A step copies its inputs into the
static buffers the graphs read (two host-to-device copies), replays, and reads ``[n, vocab]`` float32 logits.

Rows past ``n`` in a bucket are padding: token 0 at position 0, context 1, writing their K/V into a
scratch block the allocator never hands out (the runner allocates one block more than it reports). Steps
with a prompt chunk, or more decodes than the largest bucket, run eagerly.

Inside a graph no host value may change between replays, so the model's forward must not read tensors
on the host (the MoE path is sync-free for this) and decode attention must be the kernel that takes the
context lengths from the device (``paged_decode``). ``capture=False`` runs the same padded static-buffer
path without graphs: that is how the CPU tests check the padding and buffer logic.
"""
from __future__ import annotations

import logging
import time
from array import array

import torch

from .. import kernels
from ..layers.attention import AttentionMetadata, ForwardContext
from ..layers.rotary import RotaryEmbedding
from .batch import feed_from_device, host_tensor, int64_array
from .scheduler import ScheduledBatch

log = logging.getLogger("fastgen.engine")


def bucket_sizes(max_batch: int) -> list[int]:
    sizes = [s for s in (1, 2, 4) if s < max_batch]
    sizes += list(range(8, min(64, max_batch) + 1, 8))
    sizes += list(range(96, max_batch + 1, 32))
    if not sizes or sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sorted(set(sizes))


def _drop_memos(model) -> None:
    for m in model.modules():
        if isinstance(m, RotaryEmbedding):
            m.reset()


def is_decode_only(batch: ScheduledBatch) -> bool:
    return bool(batch.chunks) and all(c.length == 1 and c.sample for c in batch.chunks)


class DecodeGraphs:
    def __init__(self, model, kv_caches, block_size: int, max_blocks_per_seq: int, scratch_block: int,
                 max_batch: int, device: torch.device, capture: bool):
        self.model, self.kv_caches = model, kv_caches
        self.block_size, self.width, self.scratch = block_size, max_blocks_per_seq, scratch_block
        self.sizes = bucket_sizes(max_batch)
        self.max_batch = self.sizes[-1]
        self.device, self.capture = device, capture
        b = self.max_batch
        # ids, positions, slots, context lengths: one [4, B] buffer (one copy per step); tables [B, W]
        self.inputs = torch.zeros(4, b, dtype=torch.long, device=device)
        self.tables = torch.zeros(b, self.width, dtype=torch.long, device=device)
        self.rows = torch.arange(b, device=device)
        # the host's copy of the block tables, [B, W], one row per batch row, updated in place (plan)
        self._tables_buf = array("q", bytes(8 * b * self.width))
        self._host_tables = torch.frombuffer(self._tables_buf, dtype=torch.long).view(b, self.width)
        self._row_owner: list = [None] * b          # the block-table list each row was written from
        self._row_used = [0] * b                    # how many of its leading entries are written
        self._pad_table = [scratch_block]
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.replays = 0
        if capture:
            self._capture_all()

    # ---- one step --------------------------------------------------------------------------
    def bucket(self, n: int) -> int:
        for s in self.sizes:
            if s >= n:
                return s
        raise ValueError(f"{n} decodes exceed the largest graph batch {self.max_batch}")

    def plan(self, batch: ScheduledBatch) -> tuple[int, int, int, int, array]:
        """Host part of a step: (n, bucket, table width, longest context, packed inputs: ids, positions, slots
        and context lengths of the ``bucket`` rows, then their block tables cut to ``width``), plain ints so
        that rank 0 can send it to tensor-parallel workers, whose graphs replay the same step."""
        chunks = batch.chunks
        n = len(chunks)
        b = self.bucket(n)
        bs = self.block_size
        ids, pos, slots, ctx = [0] * b, [0] * b, [self.scratch * bs] * b, [1] * b
        width = max_ctx = 1
        owner, written = self._row_owner, self._row_used
        for i, c in enumerate(chunks):
            seq, p = c.seq, c.start
            ids[i] = seq.token_at(p)
            pos[i] = p
            bt = seq.block_table
            slots[i] = bt[p // bs] * bs + p % bs
            ctx[i] = p + 1
            if p >= max_ctx:
                max_ctx = p + 1
            used = p // bs + 1
            if used > width:
                width = used
            if owner[i] is not bt or written[i] != used:
                self._table_row(i, bt, used)
        for i in range(n, b):
            if owner[i] is not self._pad_table:
                self._table_row(i, self._pad_table, 1)
        tables = array("q", bytes(8 * b * width))
        torch.frombuffer(tables, dtype=torch.long).view(b, width).copy_(self._host_tables[:b, :width])
        return n, b, width, max_ctx, int64_array(ids, pos, slots, ctx, tables)

    def _table_row(self, i: int, table: list[int], used: int) -> None:
        """Row i of the host block tables holds ``table[:used]`` then zeros. Kept from step to step: a block
        table only grows while its sequence runs (a preempted or new sequence gets a new list), so a row
        that still holds the same list needs only its new blocks written."""
        have = self._row_used[i]
        base = i * self.width
        buf = self._tables_buf
        if self._row_owner[i] is table and have <= used and (have == 0 or buf[base + have - 1] == table[have - 1]):
            if have < used:
                buf[base + have:base + used] = array("q", table[have:used])
        else:
            buf[base:base + used] = array("q", table[:used])
            if have > used:
                buf[base + used:base + have] = array("q", bytes(8 * (have - used)))
            self._row_owner[i] = table
        self._row_used[i] = used

    def run(self, batch: ScheduledBatch) -> torch.Tensor:
        """[n, vocab] float32 logits for a decode-only batch of n <= max_batch sequences."""
        return self.run_plan(self.plan(batch))

    def run_plan(self, plan: tuple[int, int, int, int, array], fed: tuple | None = None) -> torch.Tensor:
        """``fed``: rows whose input token is on the device (see ModelRunner.forward)."""
        n, b, width, max_ctx, packed = plan
        host = host_tensor(packed, self.device)
        self.inputs[:, :b].copy_(host[:4 * b].view(4, b), non_blocking=True)
        self.tables[:b, :width].copy_(host[4 * b:].view(b, width), non_blocking=True)
        if fed is not None:
            feed_from_device(self.inputs[0], fed)
        if self.capture:
            self.graphs[b].replay()
            out = self.outputs[b]
        else:
            out = self._forward(b, max_ctx)
        self.replays += 1
        return out[:n]

    def close(self) -> None:
        """Drop the graphs and their memory pool (the engine's ``close``)."""
        for g in self.graphs.values():
            g.reset()
        self.graphs.clear()
        self.outputs.clear()
        _drop_memos(self.model)
        self.model = self.kv_caches = None

    # ---- capture ---------------------------------------------------------------------------
    def _forward(self, b: int, max_context: int) -> torch.Tensor:
        ids, pos, slots, ctx = self.inputs[:, :b]
        meta = AttentionMetadata(slot_mapping=slots, block_tables=self.tables[:b], context_lens=ctx,
                                 query_start=[], query_lens=[], context_lens_host=[], block_size=self.block_size,
                                 decode_rows=self.rows[:b], decode_seqs=self.rows[:b], prefill_seqs=[],
                                 max_decode_context=max_context)
        with kernels.plan_scope(getattr(self.model, "kernel_plan", None)):
            hidden = self.model(ids, ForwardContext(positions=pos, attn=meta, kv_caches=self.kv_caches))
            return self.model.compute_logits(hidden).float()

    @torch.inference_mode()
    def _capture_all(self) -> None:
        t0 = time.perf_counter()
        # inputs that are valid for every bucket: every row a pad row (scratch block, context 1)
        self.inputs.zero_()
        self.inputs[2].fill_(self.scratch * self.block_size)
        self.inputs[3].fill_(1)
        self.tables.zero_()
        self.tables[:, 0] = self.scratch
        pool = None
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for b in sorted(self.sizes, reverse=True):       # largest first: the others reuse its pool
                for _ in range(2):                           # compile Triton kernels, settle allocator
                    self._forward(b, 1)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=pool, stream=stream):
                    self.outputs[b] = self._forward(b, 1)
                pool = g.pool() if pool is None else pool
                self.graphs[b] = g
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        _drop_memos(self.model)         # per-step memos made during capture point into the graphs' pool
        log.info("captured %d decode CUDA graphs (batch 1..%d) in %.2f s", len(self.sizes), self.max_batch,
                 time.perf_counter() - t0)
