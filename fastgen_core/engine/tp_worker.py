"""Tensor parallelism's process side: rank 0 starts ranks 1..N-1 as child processes (``start_group``), and
each of them (``main``) builds only a model runner -- the model slice with its weights and KV cache, no
tokenizer, scheduler or sampler -- and runs the plans rank 0 sends until told to close."""
from __future__ import annotations

import logging
import os
import signal
import traceback

import torch

from .. import distributed
from ..layers.sharded import TPGroup
from ..config import EngineConfig
from ..registry import FamilyRegistry

log = logging.getLogger("fastgen.parallel")


def start_group(config: EngineConfig, size: int, timeout_s: float) -> tuple[distributed.Workers, TPGroup]:
    """Rank 0's side: spawn the workers, wait for each to start (naming one that dies), join the group."""
    workers = distributed.Workers(config, size, main)
    try:
        workers.wait_started(timeout_s)
        tp = distributed.init_group(0, size, workers.init_method, distributed.rank_device(config.torch_device(), 0),
                                    timeout_s)
    except BaseException:
        workers.close()
        raise
    return workers, tp


def main(config: EngineConfig, rank: int, size: int, init_method: str, conn, threads: int, parent: int) -> None:
    from . import build
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # Ctrl-C reaches the whole group: rank 0's process ends this one
    torch.set_num_threads(threads)
    conn.send(("started", rank))           # rank 0 waits for this before it waits in the group's start-up
    try:
        tp = distributed.init_group(rank, size, init_method, distributed.rank_device(config.torch_device(), rank),
                                    build.TP_TIMEOUT_S)
        runner = build.build_runner(config, build.read_source(config, FamilyRegistry()), tp).runner
    except BaseException:
        log.error("tensor-parallel worker rank %d could not start:\n%s", rank, traceback.format_exc())
        os._exit(1)
    try:
        while True:
            if not conn.poll(1.0):
                if os.getppid() != parent:      # rank 0's process is gone: nobody will send work again
                    break
                continue
            kind, payload = conn.recv()
            if kind == "close":
                break
            if kind == "step":
                runner.run_plan(payload)       # lm_head too: its vocabulary slice is gathered
            elif kind == "graph_step":
                with torch.inference_mode():
                    runner.graphs.run_plan(payload)
            elif kind == "graphs":
                runner.enable_decode_graphs(*payload)
    except EOFError:
        pass
    except BaseException:
        log.error("tensor-parallel worker rank %d failed:\n%s", rank, traceback.format_exc())
        os._exit(1)
    if runner.graphs is not None:
        runner.graphs.close()
    runner.kv_caches.clear()
    distributed.destroy_group()
