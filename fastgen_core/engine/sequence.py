"""A request's tokens and progress. Plain Python: no torch."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class SequenceStatus(enum.Enum):
    WAITING = "waiting"     # not admitted, or preempted (holds no KV blocks)
    RUNNING = "running"     # admitted: holds KV blocks for every token computed so far
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One request. ``num_computed_tokens`` tokens have their K/V in ``block_table``; the rest of
    ``token_ids`` still have to go through a forward pass. A decode is simply one uncomputed token."""

    seq_id: int                       # arrival order: lower is older, and older has priority
    request_id: str
    prompt_token_ids: list[int]
    max_new_tokens: int
    params: Any = None                # SamplingParams (kept opaque here)
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None
    num_preemptions: int = 0
    block_keys: list = field(default_factory=list)   # prefix-cache keys of its full blocks (kv_cache)
    registered_blocks: int = 0        # leading blocks of block_table in the prefix cache (or taken from it)
    # asynchronous scheduling: the last ``pending`` output tokens are sampled on the GPU but not yet read
    # back (placeholders, fed to the next forward from the device); ``last_pending`` when the pending token
    # is the sequence's last one (max_new_tokens), so there is nothing more to schedule for it
    pending: int = 0
    last_pending: bool = False

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_uncomputed(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def max_total_tokens(self) -> int:
        """Tokens whose K/V may be needed at once: the last generated token is never fed back."""
        return len(self.prompt_token_ids) + max(self.max_new_tokens - 1, 0)

    def token_at(self, i: int) -> int:
        p = len(self.prompt_token_ids)
        return self.prompt_token_ids[i] if i < p else self.output_token_ids[i - p]

    def token_slice(self, start: int, stop: int) -> list[int]:
        p = len(self.prompt_token_ids)
        if stop <= p:
            return self.prompt_token_ids[start:stop]
        if start >= p:
            return self.output_token_ids[start - p:stop - p]
        return self.prompt_token_ids[start:] + self.output_token_ids[:stop - p]

    @property
    def num_known_tokens(self) -> int:
        """Tokens the host knows (all but the pending ones)."""
        return self.num_tokens - self.pending

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
