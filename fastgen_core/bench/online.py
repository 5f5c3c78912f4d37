"""Online latency and effective throughput: C clients in a closed loop against the step-level engine.

Each client keeps one request in flight and sends the next as soon as its previous one finished
(streaming: a token's time is when the step that produced it returned). Per request: TTFT, per-token
latency (time between tokens after the first), end-to-end latency.

Effective throughput (the FastGen blog's): requests per second that meet the SLA, where a request meets it
if its first token arrives within prompt_length / 512 s and it then generates at >= ``sla`` tokens/s
(tokens after the first over the time after the first).
"""
from __future__ import annotations

import time
from collections import deque

import torch

from .offline import _params, _sync
from .workload import Workload

SLAS = (2.0, 4.0, 6.0)
# the caching allocator's counters a run reports (torch.cuda.memory_stats): a retry frees cached blocks, and
# cudaFree waits for the GPU, a sync the step loop does not see
ALLOCATOR_STATS = ("num_alloc_retries", "num_device_alloc", "num_device_free")


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank-interpolated percentile (q in [0, 100]) of a non-empty list."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def run_online(engine, workload: Workload, clients: int, num_requests: int | None = None) -> dict:
    n = min(num_requests or len(workload.prompts), len(workload.prompts))
    if clients < 1:
        raise ValueError(f"clients must be >= 1, got {clients}")
    todo = deque(range(n))
    arrival, first, last, finish = {}, {}, {}, {}
    count: dict[str, int] = {}
    idx: dict[str, int] = {}
    _sync(engine)
    mem0 = allocator_stats(engine)
    t0 = time.perf_counter()

    def submit():
        i = todo.popleft()
        rid = f"on{clients}-{i}"
        engine.add_request(workload.prompts[i], _params(workload.gen_lens[i]), request_id=rid)
        arrival[rid] = time.perf_counter() - t0
        idx[rid] = i
        count[rid] = 0

    for _ in range(min(clients, n)):
        submit()
    while engine.has_unfinished():
        outs = engine.step()
        now = time.perf_counter() - t0
        for o in outs:
            count[o.request_id] += len(o.new_token_ids)
            first.setdefault(o.request_id, now)
            last[o.request_id] = now
            if o.finished:
                finish[o.request_id] = now
                if todo:
                    submit()
    _sync(engine)
    wall = time.perf_counter() - t0
    ttft, tpot, e2e = [], [], []
    served = {s: 0 for s in SLAS}
    for rid, a in arrival.items():
        t_first, t_end, g = first[rid] - a, finish[rid] - a, count[rid]
        per_tok = (t_end - t_first) / (g - 1) if g > 1 else 0.0
        ttft.append(t_first)
        e2e.append(t_end)
        tpot.append(per_tok)
        plen = len(workload.prompts[idx[rid]])
        rate = (g - 1) / (t_end - t_first) if g > 1 and t_end > t_first else float("inf")
        for s in SLAS:
            if t_first <= plen / 512 and rate >= s:
                served[s] += 1
    gen = sum(count.values())
    # clients: the concurrency reached (no more than the requests); clients_asked: what was asked
    out = {"clients": min(clients, n), "clients_asked": clients, "requests": n, "wall_s": round(wall, 4),
           "gen_tok_s": round(gen / wall, 2),
           "requests_per_s": round(n / wall, 4)}
    for name, xs in (("ttft_s", ttft), ("tpot_s", tpot), ("e2e_s", e2e)):
        for q in (50, 90, 95):
            out[f"{name}_p{q}"] = round(percentile(xs, q), 5)
    for s in SLAS:
        out[f"effective_rps_sla{int(s)}"] = round(served[s] / wall, 4)
        out[f"served_frac_sla{int(s)}"] = round(served[s] / n, 4)
    if mem0:         # what the caching allocator did during the run
        out["allocator"] = allocator_delta(mem0, engine)
    return out


def allocator_stats(engine) -> dict:
    """The caching allocator's ``ALLOCATOR_STATS`` counters on ``engine``'s GPU (empty off CUDA)."""
    if engine.device.type != "cuda":
        return {}
    stats = torch.cuda.memory_stats(engine.device)
    return {k: stats.get(k, 0) for k in ALLOCATOR_STATS}


def allocator_delta(before: dict, engine) -> dict:
    """What the caching allocator's counters did since ``before`` (an ``allocator_stats`` reading)."""
    return {k: v - before[k] for k, v in allocator_stats(engine).items()}
