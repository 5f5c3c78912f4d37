"""Tensor parallelism (Megatron style) over torch.distributed: NCCL between GPUs, gloo on CPU.

Each rank holds a slice of every attention and MLP layer: query heads, KV heads and intermediate columns are
split, so the first projection of a block (``qkv_proj``, ``gate_up_proj``, ``fc1``, the experts' ``gate_up``)
is *column parallel* (each rank computes its own output columns) and the second (``o_proj``, ``down_proj``,
``fc2``, the experts' ``down``) is *row parallel* (each rank multiplies its slice of the input, then one
all-reduce sums the partial products; the bias is added once, after it). Embeddings, norms, the router and
``lm_head`` are replicated. KV heads fewer than ranks (multi-query attention) are replicated so that every
rank holds the one its query heads read.

The shared layers read the group from ``current()`` while a model is built (``with building(tp):``), so a
family composed of them runs sharded without a line of its own. The full-size checkpoint tensors are cut to
each rank's slice when copied in (``loader.copy_checked``), from the ranges each sharded parameter carries.

Only rank 0 schedules and samples. Each step it sends the batch plan (host lists) to the other ranks over a
pipe; every rank then runs the same forward on its slices and meets the others only in the all-reduces.
Waiting for work happens on the pipe, not in a collective, so an idle engine never hits a collective timeout,
and a worker whose parent is gone exits.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, FastgenError, exit_reason

log = logging.getLogger("fastgen.parallel")


class TensorParallelError(FastgenError):
    """A tensor-parallel worker failed or exited."""


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


_building = TPGroup()


def current() -> TPGroup:
    """The group the model being built is sharded over (size 1 outside ``building``)."""
    return _building


@contextlib.contextmanager
def building(tp: TPGroup):
    """Layers constructed inside take their slice of ``tp``."""
    global _building
    old, _building = _building, tp
    try:
        yield tp
    finally:
        _building = old


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def split_size(total: int, tp: TPGroup, what: str) -> int:
    """``total / tp.size``, or a ConfigError naming ``what`` and the sizes that would divide it."""
    if total % tp.size:
        raise ConfigError(f"tensor_parallel_size={tp.size} must divide {what} ({total}); allowed: "
                          f"{', '.join(map(str, _divisors(total)))}")
    return total // tp.size


def kv_head_shard(num_kv_heads: int, tp: TPGroup) -> tuple[int, int]:
    """(KV heads this rank holds, index of its first KV head). With fewer KV heads than ranks each KV head is
    replicated on ``tp.size / num_kv_heads`` consecutive ranks: exactly the ranks whose query heads read it."""
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


def column_linear(in_features: int, full_out: int, ranges: list[tuple[int, int]], bias: bool) -> nn.Linear:
    """A Linear computing this rank's output rows: ``ranges`` are (start, length) pieces of the full
    ``full_out`` rows, one per fused segment (q, k, v; gate, up). A plain full Linear at size 1."""
    tp = current()
    if tp.size == 1:
        return nn.Linear(in_features, full_out, bias=bias)
    lin = nn.Linear(in_features, sum(n for _, n in ranges), bias=bias)
    shard(lin.weight, 0, ranges, full_out)
    if bias:
        shard(lin.bias, 0, ranges, full_out)
    return lin


class RowParallelLinear(nn.Linear):
    """y = all_reduce(x_rank @ W_rank^T) + b: the input features are split over the ranks."""

    def __init__(self, in_features: int, out_features: int, bias: bool, tp: TPGroup,
                 ranges: list[tuple[int, int]]):
        super().__init__(sum(n for _, n in ranges), out_features, bias=bias)
        self.tp = tp
        shard(self.weight, 1, ranges, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tp.all_reduce(F.linear(x, self.weight))
        return y if self.bias is None else y + self.bias


def row_linear(in_features: int, out_features: int, bias: bool, ranges: list[tuple[int, int]]) -> nn.Linear:
    """nn.Linear at size 1 (numerically the same as before parallelism existed), else RowParallelLinear over
    this rank's ``ranges`` of the input features."""
    tp = current()
    if tp.size == 1:
        return nn.Linear(in_features, out_features, bias=bias)
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


class VocabParallelLMHead(nn.Linear):
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
        local = F.linear(x, self.weight, self.bias).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.tp.size)]
        torch.distributed.all_gather(parts, local, group=self.tp.group)
        return torch.cat(parts, dim=-1)


def vocab_embedding(vocab_size: int, hidden_size: int) -> nn.Embedding:
    """The token embedding: split by vocabulary rows under tensor parallelism (when the ranks divide the
    vocabulary; else every rank holds all of it)."""
    tp = current()
    if tp.size == 1 or vocab_size % tp.size:
        return nn.Embedding(vocab_size, hidden_size)
    return VocabParallelEmbedding(vocab_size, hidden_size, tp)


def vocab_linear(hidden_size: int, vocab_size: int, bias: bool) -> nn.Linear:
    """lm_head, split like ``vocab_embedding`` (so tied weights stay tied slice by slice)."""
    tp = current()
    if tp.size == 1 or vocab_size % tp.size:
        return nn.Linear(hidden_size, vocab_size, bias=bias)
    return VocabParallelLMHead(hidden_size, vocab_size, bias, tp)


# ---- processes --------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_device(device: torch.device, rank: int) -> torch.device:
    """Rank r runs on the r-th GPU after the configured one (cuda:1 with 2 ranks: cuda:1 and cuda:2)."""
    if device.type != "cuda":
        return device
    return torch.device("cuda", (device.index or 0) + rank)


def init_group(rank: int, size: int, init_method: str, device: torch.device, timeout_s: float) -> TPGroup:
    import torch.distributed as dist
    if dist.is_initialized():
        raise ConfigError("tensor_parallel_size > 1 needs a process without a torch.distributed default group "
                          "(one tensor-parallel engine per process; run others in their own processes)")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return TPGroup(rank, size, None)


def destroy_group() -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()


class Workers:
    """Ranks 1..size-1 as child processes of rank 0, each running ``target(config, rank, size, init_method,
    conn, threads, parent_pid)`` (fastgen_core.engine.tp_worker.main: a model runner that runs the plans rank
    0 sends)."""

    def __init__(self, config, size: int, target):
        import torch.multiprocessing as mp
        ctx = mp.get_context("spawn")
        self.init_method = f"tcp://127.0.0.1:{_free_port()}"
        threads = max(1, torch.get_num_threads() // size)
        self.conns, self.procs = [], []
        for rank in range(1, size):
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=target, args=(config, rank, size, self.init_method, theirs, threads, os.getpid()),
                            name=f"fastgen-tp{rank}", daemon=True)
            p.start()
            theirs.close()
            self.conns.append(mine)
            self.procs.append(p)

    def wait_started(self, timeout_s: float) -> None:
        """Until every worker has started (imported fastgen and is about to join the process group): a
        worker that dies on the way is named at once, instead of leaving rank 0 waiting in the group's
        start-up for the whole timeout."""
        from multiprocessing.connection import wait
        waiting = dict(zip(self.conns, range(1, len(self.conns) + 1)))
        deadline = time.monotonic() + timeout_s
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TensorParallelError(f"tensor-parallel worker rank(s) {sorted(waiting.values())} did not start "
                                          f"within {timeout_s:.0f} s")
            ready = wait([*waiting, *(p.sentinel for p in self.procs)], left)
            for c in [c for c in ready if c in waiting]:
                with contextlib.suppress(EOFError, OSError):
                    c.recv()
                    del waiting[c]
            error = self.dead()
            if error is not None:
                raise error

    def dead(self, wait_s: float = 0.0) -> TensorParallelError | None:
        """The error naming the first worker that has exited, after waiting up to ``wait_s`` for one to exit;
        None while all run. Rank 0 asks this after a failed step: a worker killed mid-step fails rank 0's
        all-reduce with gloo's "Connection reset by peer", which names no worker."""
        from multiprocessing.connection import wait
        exited = wait([p.sentinel for p in self.procs], wait_s)
        for rank, p in enumerate(self.procs, 1):
            if p.sentinel in exited:
                p.join()            # its sentinel closes as it exits: this only reaps it, for its exit code
                return TensorParallelError(f"tensor-parallel worker rank {rank} exited (pid {p.pid}, "
                                           f"{exit_reason(p.exitcode)}"
                                           f"{'; its error is in the log above' if p.exitcode > 0 else ''})")
        return None

    def check(self) -> None:
        error = self.dead()
        if error is not None:
            raise error

    def send(self, msg) -> None:
        self.check()
        for c in self.conns:
            c.send(msg)

    def close(self, timeout: float = 30) -> None:
        for c in self.conns:
            with contextlib.suppress(OSError, BrokenPipeError):
                c.send(("close", None))
                c.close()
        for p in self.procs:
            p.join(timeout)
            if p.is_alive():
                p.terminate()
                p.join(5)
        self.conns, self.procs = [], []
