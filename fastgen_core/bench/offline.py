"""Offline throughput of our engine: every request submitted at t=0, the step loop run to completion."""
from __future__ import annotations

import time

import torch

from ..sampling import SamplingParams
from .workload import Workload


def _sync(engine) -> None:
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)


def _params(gen: int) -> SamplingParams:
    # forced length: the same tokens count for every engine, whatever the (random) weights predict
    return SamplingParams(max_new_tokens=gen, min_new_tokens=gen, ignore_eos=True)


def warm_up(engine, workload: Workload, n: int = 4) -> None:
    """Run a few short requests so that kernel compilation and allocator growth stay out of the timing."""
    for i, p in enumerate(workload.prompts[:n]):
        engine.add_request(p, _params(4), request_id=f"warm-{i}")
    while engine.has_unfinished():
        engine.step()
    _sync(engine)


def run_offline(engine, workload: Workload) -> dict:
    """Wall time, generated and total tokens/s, and per-request latencies (all arrive at t=0)."""
    stats0 = engine.stats()
    _sync(engine)
    t0 = time.perf_counter()
    first: dict[str, float] = {}
    done: dict[str, float] = {}
    for i, (p, g) in enumerate(zip(workload.prompts, workload.gen_lens)):
        engine.add_request(p, _params(g), request_id=f"off-{i}")
    got = 0
    while engine.has_unfinished():
        outs = engine.step()
        now = time.perf_counter() - t0
        for o in outs:
            got += len(o.new_token_ids)
            first.setdefault(o.request_id, now)
            if o.finished:
                done[o.request_id] = now
    _sync(engine)
    wall = time.perf_counter() - t0
    if got != workload.gen_tokens:
        raise RuntimeError(f"engine generated {got} tokens, the workload asked for {workload.gen_tokens}")
    stats = engine.stats()
    e2e = sorted(done.values())
    return {"wall_s": round(wall, 4), "gen_tokens": got, "prompt_tokens": workload.prompt_tokens,
            "gen_tok_s": round(got / wall, 2), "total_tok_s": round((got + workload.prompt_tokens) / wall, 2),
            "mean_ttft_s": round(sum(first.values()) / len(first), 4), "mean_e2e_s": round(sum(e2e) / len(e2e), 4),
            "steps": stats["steps"] - stats0["steps"], "preemptions": stats["preemptions"] - stats0["preemptions"],
            "graph_steps": stats["graph_steps"] - stats0["graph_steps"],
            "prefix_cache_hit_tokens": stats["prefix_cache_hit_tokens"] - stats0["prefix_cache_hit_tokens"]}
