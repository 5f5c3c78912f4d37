"""Blocked KV-cache bookkeeping: which fixed-size blocks are free, who holds which. Plain Python: no torch.

The tensors themselves live in the runner; this module only hands out block ids, with reference counts.

Prefix caching (``prefix_caching=True``): a block whose ``block_size`` tokens all have their K/V is
registered under a key naming its tokens and everything before them (``block_keys``). A sequence admitted
later whose known tokens start with registered blocks takes references on them and starts computing after
them. A cached block that no sequence holds any more is *evictable*: it keeps its contents and its key
until a new allocation needs the space (least recently released first), so it still counts as free.
"""
from __future__ import annotations

from collections import OrderedDict, deque


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


def extend_block_keys(keys: list, tokens, block_size: int, num_blocks: int) -> None:
    """Append keys for full blocks ``len(keys)..num_blocks-1`` of ``tokens`` (a sequence's known tokens,
    sliceable). A key is (hash of the previous block's key, this block's tokens): equal keys mean equal
    tokens in the block (compared exactly by the dict) after an equal prefix (by a 64-bit hash chain)."""
    for i in range(len(keys), num_blocks):
        parent = hash(keys[i - 1]) if i else None
        keys.append((parent, tuple(tokens[i * block_size:(i + 1) * block_size])))


GIB = 1 << 30


def gpu_kv_budget(total: int, free: int, own: int, fraction: float, activations: int, device: str = "cuda") -> int:
    """Bytes for the KV cache on a GPU: this process may use ``fraction`` of the card in all (vLLM's
    ``gpu_memory_utilization`` meaning), of which ``own`` (weights already loaded, allocator cache) and
    ``activations`` are not KV. So two replicas on one GPU at 0.45 each both fit. Raises ValueError naming
    the numbers when others already hold so much that the fraction cannot be had (beyond 1 GiB of CUDA
    context and the like, which is taken from the share: fraction 1.0 works on an otherwise empty card).
    """
    want = fraction * total
    if free + own < want - GIB:             # (up to 1 GiB short: CUDA contexts, taken from the share)
        raise ValueError(
            f"gpu_memory_fraction={fraction} asks for {want / GIB:.1f} GiB of {device}'s {total / GIB:.1f} GiB, but "
            f"only {(free + own) / GIB:.1f} GiB are free to this process (other processes hold "
            f"{(total - free - own) / GIB:.1f} GiB); lower gpu_memory_fraction (it is this process's share of the "
            f"card: e.g. 0.45 for each of two replicas on one GPU)")
    return int(min(want, free + own) - own - activations)


class BlockAllocator:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = False):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self._free: deque[int] = deque(range(num_blocks))
        self._refs = [0] * num_blocks
        self._cached: dict[tuple, int] = {}                       # key -> block holding those tokens
        self._key_of: dict[int, tuple] = {}                       # block -> its key
        self._evictable: OrderedDict[int, None] = OrderedDict()   # cached, held by nobody; oldest first

    @property
    def num_free(self) -> int:
        return len(self._free) + len(self._evictable)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    def refcount(self, block: int) -> int:
        return self._refs[block]

    @property
    def num_used(self) -> int:
        """Blocks some sequence holds (evictable cached blocks are free)."""
        return self.num_blocks - self.num_free

    @property
    def usage(self) -> float:
        return self.num_used / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return blocks_for(num_tokens, self.block_size)

    def can_allocate(self, n: int) -> bool:
        return n <= self.num_free

    def allocate(self, n: int) -> list[int]:
        if n > self.num_free:
            raise RuntimeError(f"asked for {n} KV blocks with only {self.num_free} free (call can_allocate first)")
        out = []
        for _ in range(n):
            if self._free:
                b = self._free.popleft()
            else:                                   # evict the least recently released cached block
                b, _ = self._evictable.popitem(last=False)
                del self._cached[self._key_of.pop(b)]
            self._refs[b] = 1
            out.append(b)
        return out

    def free(self, blocks: list[int]) -> None:
        for b in blocks:
            if self._refs[b] <= 0:
                raise RuntimeError(f"KV block {b} freed twice")
            self._refs[b] -= 1
            if self._refs[b] == 0:
                if b in self._key_of:
                    self._evictable[b] = None       # keeps its contents until the space is needed
                else:
                    self._free.append(b)

    # prefix cache
    def match(self, keys: list) -> list[int]:
        """Blocks holding the longest cached prefix of ``keys`` (no references taken)."""
        out = []
        for key in keys:
            b = self._cached.get(key)
            if b is None:
                break
            out.append(b)
        return out

    def num_evictable(self, blocks: list[int]) -> int:
        """How many of ``blocks`` nobody holds (taking them uses up free space)."""
        return sum(1 for b in blocks if self._refs[b] == 0)

    def acquire(self, blocks: list[int]) -> None:
        """Take a reference on cached blocks found by ``match``."""
        for b in blocks:
            if self._refs[b] == 0:
                del self._evictable[b]
            self._refs[b] += 1

    def register(self, block: int, key: tuple) -> None:
        """``block`` (held) now holds the tokens ``key`` names. The first block registered for a key stays."""
        if self._refs[block] <= 0:
            raise RuntimeError(f"KV block {block} registered while nobody holds it")
        if key not in self._cached and block not in self._key_of:
            self._cached[key] = block
            self._key_of[block] = key

    # sequence-level check/act pairs
    def blocks_to_hold(self, block_table: list[int], num_tokens: int) -> int:
        return max(self.blocks_for(num_tokens) - len(block_table), 0)

    def can_grow(self, block_table: list[int], num_tokens: int) -> bool:
        return self.can_allocate(self.blocks_to_hold(block_table, num_tokens))

    def grow(self, block_table: list[int], num_tokens: int) -> None:
        block_table.extend(self.allocate(self.blocks_to_hold(block_table, num_tokens)))
