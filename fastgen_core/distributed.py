"""Tensor parallelism's processes: ranks 1..N-1 as child processes of rank 0 (``Workers``), joining and leaving
the torch.distributed group (NCCL between GPUs, gloo on CPU), and which device each rank runs on.

Only rank 0 schedules and samples. Each step it sends the batch plan (host lists) to the other ranks over a
pipe; every rank then runs the same forward on its slices (fastgen_core.layers.sharded) and meets the others
only in the all-reduces. Waiting for work happens on the pipe, not in a collective, so an idle engine never
hits a collective timeout, and a worker whose parent is gone exits. What a worker runs is
fastgen_core.engine.tp_worker.main.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import time

import torch

from .errors import ConfigError, TensorParallelError, exit_reason
from .layers.sharded import TPGroup

log = logging.getLogger("fastgen.parallel")

__all__ = ["TensorParallelError", "Workers", "destroy_group", "init_group", "rank_device"]


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
