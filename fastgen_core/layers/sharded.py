"""Tensor-parallel (Megatron-style) sharded layers, and the group they are sharded over.

Each rank holds a slice of every attention and MLP layer: query heads, KV heads and intermediate columns are
split, so the first projection of a block (``qkv_proj``, ``gate_up_proj``, ``fc1``, the experts' ``gate_up``)
is *column parallel* (each rank computes its own output columns) and the second (``o_proj``, ``down_proj``,
``fc2``, the experts' ``down``) is *row parallel* (each rank multiplies its slice of the input, then one
all-reduce sums the partial products; the bias is added once, after it). The token embedding and ``lm_head``
are split by vocabulary rows when the ranks divide the vocabulary. KV heads fewer than ranks (multi-query
attention) are replicated so that every rank holds the one its query heads read.

The group is explicit: a layer is handed its ``TPGroup`` when it is constructed (``tp=``; None, the default,
is one process, where every constructor here returns a plain ``linear.Linear`` (an ``nn.Linear``) or
``nn.Embedding``). The engine hands a family's model its group on the config it builds the model from
(``DecoderConfig.tp``). Sharded parameters carry the ranges of the full tensor they hold (``shard``), from which the loader cuts each full
checkpoint tensor (``take_slice``). The processes themselves are fastgen_core.distributed's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .linear import Linear, linear


@dataclass(frozen=True)
class TPGroup:
    """This process's place in a tensor-parallel group (size 1: no parallelism, no collectives)."""

    rank: int = 0
    size: int = 1
    group: object = field(default=None, compare=False)     # torch.distributed ProcessGroup (None: the world)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            torch.distributed.all_reduce(x, group=self.group)
        return x


SINGLE = TPGroup()


def group_of(tp: TPGroup | None) -> TPGroup:
    """``tp``, or the one-process group for None (what a layer built without a group gets)."""
    return SINGLE if tp is None else tp


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def split_size(total: int, tp: TPGroup | None, what: str) -> int:
    """``total / tp.size``, or a ConfigError naming ``what`` and the sizes that would divide it."""
    tp = group_of(tp)
    if total % tp.size:
        raise ConfigError(f"tensor_parallel_size={tp.size} must divide {what} ({total}); allowed: "
                          f"{', '.join(map(str, _divisors(total)))}")
    return total // tp.size


def kv_head_shard(num_kv_heads: int, tp: TPGroup | None) -> tuple[int, int]:
    """(KV heads this rank holds, index of its first KV head). With fewer KV heads than ranks each KV head is
    replicated on ``tp.size / num_kv_heads`` consecutive ranks: exactly the ranks whose query heads read it."""
    tp = group_of(tp)
    if num_kv_heads % tp.size == 0:
        local = num_kv_heads // tp.size
        return local, tp.rank * local
    if tp.size % num_kv_heads == 0:
        return 1, tp.rank // (tp.size // num_kv_heads)
    raise ConfigError(f"tensor_parallel_size={tp.size} and num_key_value_heads ({num_kv_heads}): one must divide "
                      f"the other; allowed: {', '.join(map(str, _divisors(num_kv_heads)))} or a "
                      f"multiple of {num_kv_heads}")


def check_model(num_attention_heads: int, num_key_value_heads: int, size: int) -> None:
    """The checks every family needs, made before any worker process starts (the layers check the rest)."""
    tp = TPGroup(0, size)
    split_size(num_attention_heads, tp, "num_attention_heads")
    kv_head_shard(num_key_value_heads, tp)


def shard(param: torch.Tensor, dim: int, ranges: list[tuple[int, int]], full: int) -> None:
    """Mark ``param`` as this rank's slice of a full tensor that is ``full`` long along ``dim``: the slice is
    the concatenation of ``full[start:start + length]`` for each (start, length) in ``ranges``."""
    assert sum(n for _, n in ranges) == param.shape[dim], (ranges, param.shape, dim)
    param.tp_dim, param.tp_ranges, param.tp_full = dim, list(ranges), full


def full_shape(param: torch.Tensor) -> tuple[int, ...]:
    """The shape of the whole tensor ``param`` is a slice of (its own shape if it is not sharded)."""
    shape = list(param.shape)
    if hasattr(param, "tp_ranges"):
        shape[param.tp_dim] = param.tp_full
    return tuple(shape)


def take_slice(param: torch.Tensor, full_tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``full_tensor`` for ``param`` (``full_tensor`` itself if ``param`` is not sharded)."""
    if not hasattr(param, "tp_ranges"):
        return full_tensor
    parts = [full_tensor.narrow(param.tp_dim, s, n) for s, n in param.tp_ranges]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=param.tp_dim)


def column_linear(in_features: int, full_out: int, ranges: list[tuple[int, int]], bias: bool,
                  tp: TPGroup | None = None) -> nn.Linear:
    """A Linear computing this rank's output rows: ``ranges`` are (start, length) pieces of the full
    ``full_out`` rows, one per fused segment (q, k, v; gate, up). A plain full Linear at size 1."""
    if group_of(tp).size == 1:
        return Linear(in_features, full_out, bias=bias)
    lin = Linear(in_features, sum(n for _, n in ranges), bias=bias)
    shard(lin.weight, 0, ranges, full_out)
    if bias:
        shard(lin.bias, 0, ranges, full_out)
    return lin


class RowParallelLinear(Linear):
    """y = all_reduce(x_rank @ W_rank^T) + b: the input features are split over the ranks."""

    def __init__(self, in_features: int, out_features: int, bias: bool, tp: TPGroup,
                 ranges: list[tuple[int, int]]):
        super().__init__(sum(n for _, n in ranges), out_features, bias=bias)
        self.tp = tp
        shard(self.weight, 1, ranges, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tp.all_reduce(linear(x, self.weight))
        return y if self.bias is None else y + self.bias


def row_linear(in_features: int, out_features: int, bias: bool, ranges: list[tuple[int, int]],
               tp: TPGroup | None = None) -> nn.Linear:
    """nn.Linear at size 1 (numerically the same as before parallelism existed), else RowParallelLinear over
    this rank's ``ranges`` of the input features."""
    if group_of(tp).size == 1:
        return Linear(in_features, out_features, bias=bias)
    return RowParallelLinear(in_features, out_features, bias, tp, ranges)


class VocabParallelEmbedding(nn.Embedding):
    """This rank's rows [start, start + n) of the token embedding; ids elsewhere give zeros here, and one
    all-reduce assembles every token's row."""

    def __init__(self, num_embeddings: int, embedding_dim: int, tp: TPGroup):
        n = num_embeddings // tp.size
        super().__init__(n, embedding_dim)
        self.tp, self.start = tp, tp.rank * n
        shard(self.weight, 0, [(self.start, n)], num_embeddings)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        mine = (local >= 0) & (local < self.num_embeddings)
        out = F.embedding(local.clamp(0, self.num_embeddings - 1), self.weight) * mine.unsqueeze(-1).to(self.weight.dtype)
        return self.tp.all_reduce(out)


class VocabParallelLMHead(Linear):
    """Logits of this rank's vocabulary slice, gathered from every rank into the whole row (every rank must
    call it for the same rows)."""

    def __init__(self, in_features: int, vocab_size: int, bias: bool, tp: TPGroup):
        n = vocab_size // tp.size
        super().__init__(in_features, n, bias=bias)
        self.tp = tp
        shard(self.weight, 0, [(tp.rank * n, n)], vocab_size)
        if bias:
            shard(self.bias, 0, [(tp.rank * n, n)], vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = linear(x, self.weight, self.bias).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.tp.size)]
        torch.distributed.all_gather(parts, local, group=self.tp.group)
        return torch.cat(parts, dim=-1)


def vocab_embedding(vocab_size: int, hidden_size: int, tp: TPGroup | None = None) -> nn.Embedding:
    """The token embedding: split by vocabulary rows under tensor parallelism (when the ranks divide the
    vocabulary; else every rank holds all of it)."""
    tp = group_of(tp)
    if tp.size == 1 or vocab_size % tp.size:
        return nn.Embedding(vocab_size, hidden_size)
    return VocabParallelEmbedding(vocab_size, hidden_size, tp)


def vocab_linear(hidden_size: int, vocab_size: int, bias: bool, tp: TPGroup | None = None) -> nn.Linear:
    """lm_head, split like ``vocab_embedding`` (so tied weights stay tied slice by slice)."""
    tp = group_of(tp)
    if tp.size == 1 or vocab_size % tp.size:
        return Linear(hidden_size, vocab_size, bias=bias)
    return VocabParallelLMHead(hidden_size, vocab_size, bias, tp)
