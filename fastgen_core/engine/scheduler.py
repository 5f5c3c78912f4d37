"""Dynamic SplitFuse scheduling over a token budget. Plain Python: no torch.

Each step fills ``max_ragged_batch_size`` tokens from at most ``max_ragged_sequence_count`` sequences:
running decodes first (oldest first), then the unfinished prompt chunks of running sequences, then new
prompts in arrival order. A long prompt is split across steps; short ones are packed together.

KV policy, and why it cannot deadlock:
- A sequence is admitted only if blocks for all its known tokens are free (plus a margin while others
  run), and they are taken at once, so a prompt that started is never stuck for KV.
- A decode that needs a block and finds none preempts the *newest* running sequence (recompute: its
  blocks are freed and it goes back to the waiting queue with the tokens it generated). The oldest running
  sequence is therefore never preempted while another one runs, and on its own it always fits, because a
  request whose prompt + max_new_tokens cannot fit in the whole cache is refused at submission.
- The waiting queue is kept in arrival order and served strictly FIFO, so nothing starves.
- With prefix caching, cached blocks nobody holds count as free (any allocation may evict them), and an
  admission that revives some of them counts those against the free space too, so the arithmetic above
  is unchanged; a sequence admitted onto cached blocks starts its first chunk after them.

Asynchronous scheduling (the engine's ``async_scheduling``) schedules step N+1 before step N's sampled
tokens are read back: a sequence sampled at N has a pending last token (fed from the device), and one
whose pending token is its last (max_new_tokens) is neither scheduled nor chosen as a victim until the
engine finishes it. Blocks are registered in the prefix cache only once every token in them is known.
"""
from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

from ..config import EngineConfig
from .kv_cache import BlockAllocator, extend_block_keys
from .sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class ScheduledChunk:
    seq: Sequence
    start: int          # first token index (== seq.num_computed_tokens when scheduled)
    length: int         # tokens in this forward
    sample: bool        # this chunk reaches the end of the known tokens: sample the next one


@dataclass
class ScheduledBatch:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(c.length for c in self.chunks)

    def __bool__(self) -> bool:
        return bool(self.chunks)


class Scheduler:
    def __init__(self, allocator: BlockAllocator, max_ragged_batch_size: int = EngineConfig.max_ragged_batch_size,
                 max_ragged_sequence_count: int = EngineConfig.max_ragged_sequence_count, admission_margin: float = 0.05):
        if max_ragged_batch_size < 1:
            raise ValueError(f"max_ragged_batch_size must be >= 1, got {max_ragged_batch_size}")
        if max_ragged_sequence_count < 1:
            raise ValueError(f"max_ragged_sequence_count must be >= 1, got {max_ragged_sequence_count}")
        self.allocator = allocator
        self.max_ragged_batch_size = max_ragged_batch_size
        self.max_ragged_sequence_count = max_ragged_sequence_count
        self.admission_margin = admission_margin
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []          # kept sorted by seq_id (arrival)
        self.num_preemptions = 0
        self.num_cached_tokens = 0                  # prompt/recompute tokens served from the prefix cache

    # ---- queue management -------------------------------------------------------------------
    def can_ever_fit(self, seq: Sequence) -> bool:
        return self.allocator.blocks_for(seq.max_total_tokens) <= self.allocator.num_blocks

    def add(self, seq: Sequence) -> None:
        if not self.can_ever_fit(seq):
            raise ValueError(f"request {seq.request_id!r} needs {self.allocator.blocks_for(seq.max_total_tokens)} "
                             f"KV blocks but the cache has {self.allocator.num_blocks}")
        seq.status = SequenceStatus.WAITING
        self._insert_waiting(seq)

    def _insert_waiting(self, seq: Sequence) -> None:
        if not self.waiting or self.waiting[-1].seq_id < seq.seq_id:
            self.waiting.append(seq)
            return
        keys = [s.seq_id for s in self.waiting]
        self.waiting.insert(bisect.bisect_left(keys, seq.seq_id), seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Mark finished and free its blocks exactly once (also used for aborts)."""
        if seq.status is SequenceStatus.FINISHED:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self._release(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def _release(self, seq: Sequence) -> None:
        self.allocator.free(seq.block_table)
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.registered_blocks = 0

    def _preempt(self, seq: Sequence, batch: ScheduledBatch) -> None:
        self.running.remove(seq)
        self._release(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self._insert_waiting(seq)
        batch.preempted.append(seq)

    # ---- one step ---------------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        chunks = batch.chunks
        budget = self.max_ragged_batch_size
        max_count = self.max_ragged_sequence_count
        alloc = self.allocator
        bs = alloc.block_size
        running_status = SequenceStatus.RUNNING
        decodes, prefills = [], []
        for s in self.running:
            uncomputed = s.num_uncomputed
            if uncomputed == 1:
                if not s.last_pending:
                    decodes.append(s)
            elif uncomputed > 1:
                prefills.append(s)
        for seq in decodes + prefills:
            if budget == 0 or len(chunks) >= max_count:
                break
            if seq.status is not running_status:   # preempted earlier in this loop
                continue
            start = seq.num_computed_tokens
            num_tokens = seq.num_tokens
            n = min(num_tokens - start, budget)
            end = start + n
            if end > len(seq.block_table) * bs:     # needs blocks (a decode: once every block_size steps)
                self._make_room(seq, end, batch)
                if seq.status is not running_status:
                    continue
                alloc.grow(seq.block_table, end)
            chunks.append(ScheduledChunk(seq, start, n, end == num_tokens))
            budget -= n
        while self.waiting and budget > 0 and len(batch.chunks) < self.max_ragged_sequence_count:
            seq = self.waiting[0]
            hits = self._cached_prefix(seq)
            need = alloc.blocks_for(seq.num_tokens) - len(hits)
            margin = min(len(self.running), int(self.admission_margin * alloc.num_blocks)) if self.running else 0
            # cached blocks nobody holds count as free until taken
            if not alloc.can_allocate(need + margin + alloc.num_evictable(hits)):
                break
            self.waiting.popleft()
            alloc.acquire(hits)
            seq.block_table = hits + alloc.allocate(need)
            seq.num_computed_tokens = len(hits) * alloc.block_size
            seq.registered_blocks = len(hits)
            self.num_cached_tokens += seq.num_computed_tokens
            seq.status = SequenceStatus.RUNNING
            bisect.insort(self.running, seq, key=lambda s: s.seq_id)
            n = min(seq.num_uncomputed, budget)
            start = seq.num_computed_tokens
            batch.chunks.append(ScheduledChunk(seq, start, n, start + n == seq.num_tokens))
            budget -= n
        return batch

    def _make_room(self, seq: Sequence, end: int, batch: ScheduledBatch) -> None:
        """Preempt the newest running sequences not yet scheduled in this batch (``seq`` itself last) until
        seq's block table can grow to ``end`` tokens."""
        if self.allocator.can_grow(seq.block_table, end):
            return
        scheduled = {c.seq.seq_id for c in batch.chunks}
        while not self.allocator.can_grow(seq.block_table, end):
            victim = max((s for s in self.running if s.seq_id not in scheduled and not s.last_pending),
                         key=lambda s: s.seq_id, default=seq)
            self._preempt(victim, batch)
            if victim is seq:
                break

    def _cached_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks holding the start of seq's known tokens; at least one token is left to compute,
        since its forward pass gives the logits to sample from."""
        if not self.allocator.prefix_caching or getattr(seq.params, "prompt_logprobs", None) is not None:
            return []                  # prompt logprobs need every prompt position computed
        full = (seq.num_tokens - 1) // self.allocator.block_size
        extend_block_keys(seq.block_keys, _Tokens(seq), self.allocator.block_size, full)
        return self.allocator.match(seq.block_keys[:full])

    def postprocess(self, batch: ScheduledBatch) -> None:
        """Record that the scheduled tokens now have K/V in the cache (sampling appends tokens after), and
        with prefix caching register the blocks this step filled."""
        caching = self.allocator.prefix_caching
        for c in batch.chunks:
            seq = c.seq
            if seq.is_finished:              # ended (or aborted) while this batch was being built
                continue
            seq.num_computed_tokens = c.start + c.length
            if caching:
                self.register_blocks(seq)

    def register_blocks(self, seq: Sequence) -> None:
        """Put the sequence's full, computed blocks whose tokens are all known into the prefix cache."""
        if not self.allocator.prefix_caching or seq.status is not SequenceStatus.RUNNING:
            return
        bs = self.allocator.block_size
        full = min(seq.num_computed_tokens, seq.num_known_tokens) // bs
        extend_block_keys(seq.block_keys, _Tokens(seq), bs, full)
        for i in range(seq.registered_blocks, full):
            self.allocator.register(seq.block_table[i], seq.block_keys[i])
        seq.registered_blocks = max(seq.registered_blocks, full)


class _Tokens:
    """A sequence's known tokens, sliceable without concatenating prompt and output."""

    def __init__(self, seq: Sequence):
        self.seq = seq

    def __getitem__(self, s: slice) -> list[int]:
        return self.seq.token_slice(s.start, s.stop)
