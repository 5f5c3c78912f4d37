"""Blocked KV-cache bookkeeping: which fixed-size blocks are free, who holds which. Plain Python: no torch.

The tensors themselves live in the runner; this module only hands out block ids. Reference counts are
kept so that shared (prefix-cached) blocks can be added without changing callers.
"""
from __future__ import annotations

from collections import deque


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


GIB = 1 << 30


def gpu_kv_budget(total: int, free: int, own: int, fraction: float, activations: int, device: str = "cuda") -> int:
    """Bytes for the KV cache on a GPU: this process may use ``fraction`` of the card in all (vLLM's
    ``gpu_memory_utilization`` meaning), of which ``own`` (weights already loaded, allocator cache) and
    ``activations`` are not KV. So two replicas on one GPU at 0.45 each both fit. Raises ValueError naming
    the numbers when others already hold so much that the fraction cannot be had.
    """
    want = fraction * total
    if free + own < want:
        raise ValueError(
            f"gpu_memory_fraction={fraction} asks for {want / GIB:.1f} GiB of {device}'s {total / GIB:.1f} GiB, but "
            f"only {(free + own) / GIB:.1f} GiB are free to this process (other processes hold "
            f"{(total - free - own) / GIB:.1f} GiB); lower gpu_memory_fraction (it is this process's share of the "
            f"card: e.g. 0.45 for each of two replicas on one GPU)")
    return int(want - own - activations)


class BlockAllocator:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self._refs = [0] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def usage(self) -> float:
        return self.num_used / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return blocks_for(num_tokens, self.block_size)

    def can_allocate(self, n: int) -> bool:
        return n <= len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise RuntimeError(f"asked for {n} KV blocks with only {len(self._free)} free (call can_allocate first)")
        out = [self._free.popleft() for _ in range(n)]
        for b in out:
            self._refs[b] = 1
        return out

    def free(self, blocks: list[int]) -> None:
        for b in blocks:
            if self._refs[b] <= 0:
                raise RuntimeError(f"KV block {b} freed twice")
            self._refs[b] -= 1
            if self._refs[b] == 0:
                self._free.append(b)

    # sequence-level check/act pairs
    def blocks_to_hold(self, block_table: list[int], num_tokens: int) -> int:
        return max(self.blocks_for(num_tokens) - len(block_table), 0)

    def can_grow(self, block_table: list[int], num_tokens: int) -> bool:
        return self.can_allocate(self.blocks_to_hold(block_table, num_tokens))

    def grow(self, block_table: list[int], num_tokens: int) -> None:
        block_table.extend(self.allocate(self.blocks_to_hold(block_table, num_tokens)))
