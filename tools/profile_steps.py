"""Where a step's time goes, by step type, for a bench preset on a GPU: wall time, GPU busy time, and the
GPU time by kind of kernel (GEMM, attention, elementwise/norm, copy/index), plus the host time the GPU
waits for (wall - busy).

    python3 tools/profile_steps.py --preset phi-2 --budget 2048 --requests 128 [--prompt 1200 --gen 60]

Pass 1 times every step with a synchronise on each side (wall) and CUDA events (GPU). Pass 2 replays the
same workload under torch.profiler, one profile per sampled step, and sums its kernels' durations by kind.
A step is "prefill" when it carries prompt tokens, "decode" when every row is a decode. Pass 3 runs the
workload as a server does, without a synchronise between steps (asynchronous scheduling overlaps the host's
work with the GPU's), and reports the host time the GPU waits for: wall time minus the kernels' busy time,
over the whole run and over its decode-only tail (every generation forced to --gen tokens with
--equal-gen, so that all sequences decode together: "host time per decode step at N sequences").
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections import defaultdict

import torch

from fastgen_core.bench.cli import append_jsonl
from fastgen_core.bench.offline import _params, warm_up
from fastgen_core.bench.online import allocator_delta, allocator_stats
from fastgen_core.bench.workload import make_workload, write_preset
from fastgen_core.config import EngineConfig
from fastgen_core.engine.engine import LLMEngine

KINDS = [  # first match wins
    ("attention", re.compile(r"paged_prefill|paged_decode|flash|fmha|attention|sdpa|softmax", re.I)),
    ("gemm", re.compile(r"gemm|cutlass|xmma|nvjet|cublas|matmul|splitk|grouped_mm", re.I)),
    ("copy/index", re.compile(r"copy|index|gather|scatter|cat_|CatArray|fill|memcpy|memset", re.I)),
    ("elementwise/norm", re.compile(r"elementwise|vectorized|reduce|norm|silu|gelu|rotary|mul|add|act", re.I)),
]


def kind_of(name: str) -> str:
    for kind, pat in KINDS:
        if pat.search(name):
            return kind
    return "other"


def submit(eng, w, tag):
    for i, (p, g) in enumerate(zip(w.prompts, w.gen_lens)):
        eng.add_request(p, _params(g), request_id=f"{tag}{i}")


def run_pass(eng, w, tag, profile_every=0):
    submit(eng, w, tag)
    rows, kernels = [], defaultdict(lambda: defaultdict(float))
    by_name = defaultdict(lambda: defaultdict(float))
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    i = 0
    while eng.has_unfinished():
        before = eng.counters["prompt_tokens"]
        prof = None
        if profile_every and i % profile_every == 0:
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
            prof.__enter__()
        torch.cuda.synchronize()
        t = time.perf_counter()
        e0.record()
        eng.step()
        e1.record()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t
        kind = "prefill" if eng.counters["prompt_tokens"] != before else "decode"
        if prof is not None:
            prof.__exit__(None, None, None)
            for ev in prof.events():
                if ev.device_type == torch.autograd.DeviceType.CUDA:
                    us = ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
                    kernels[kind][kind_of(ev.name)] += us / 1e3
                    kernels[kind]["#kernels"] += 1
                    by_name[kind][ev.name[:90]] += us / 1e3
            kernels[kind]["#profiled"] += 1
        rows.append((kind, wall * 1e3, e0.elapsed_time(e1)))
        i += 1
    return rows, kernels, by_name


def busy_union_us(spans: list[tuple[float, float]]) -> float:
    """The time covered by the (start, end) spans: kernels of two streams that overlap count once."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(spans):
        if e > end:
            total += e - max(s, end)
            end = e
    return total


def _busy_s(prof) -> float:
    """The GPU's busy time in a profile: the union of its kernels' (and copies') intervals, so that a parallel
    layer's two streams (layers/transformer.py::branch_stream) are not counted twice."""
    spans = [(ev.time_range.start, ev.time_range.end) for ev in prof.events()
             if ev.device_type == torch.autograd.DeviceType.CUDA]
    return busy_union_us(spans) / 1e6


def _timed_run(eng, w, tag, profiled: bool):
    """One run without a synchronise between steps, split at the decode-only tail (the first step after
    which no prompt token is left; the host waits for the GPU once there). Returns (wall of the head, of the
    tail, steps in each, sequences at the tail's start, the two profiles or Nones)."""
    submit(eng, w, tag)
    acts = [torch.profiler.ProfilerActivity.CUDA]
    head = torch.profiler.profile(activities=acts) if profiled else None
    tail = None
    steps = tail_steps = tail_running = 0
    in_tail = False
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    if head is not None:
        head.__enter__()
    tail_t0 = None
    while eng.has_unfinished():
        if not in_tail and not eng.scheduler.waiting and all(s.num_uncomputed <= 1 for s in eng.scheduler.running):
            in_tail = True
            if head is not None:
                head.__exit__(None, None, None)         # (stopping a profile waits for the GPU once)
            else:
                torch.cuda.synchronize()
            tail_running = len(eng.scheduler.running)
            if profiled:
                tail = torch.profiler.profile(activities=acts)
                tail.__enter__()
            tail_t0 = time.perf_counter()
        eng.step()
        steps += 1
        tail_steps += in_tail
    torch.cuda.synchronize()
    end = time.perf_counter()
    if profiled:
        (tail or head).__exit__(None, None, None)
    head_wall = (tail_t0 or end) - t0
    return head_wall, end - (tail_t0 or end), steps - tail_steps, tail_steps, tail_running, head, tail


def overlapped_pass(eng, w, tag):
    """Pass 3: no synchronise between steps. Kernel busy time from a profile over the run up to the
    decode-only tail and another over the tail; the wall times also from a run of the same workload without
    the profiler (CUPTI slows each launch down, which prompt-carrying steps, with hundreds of launches, feel)."""
    m0 = allocator_stats(eng)
    head_wall_u, tail_wall_u, *_ = _timed_run(eng, w, tag + "u", profiled=False)
    allocator = allocator_delta(m0, eng)
    head_wall, tail_wall, head_steps, tail_steps, tail_running, head, tail = _timed_run(eng, w, tag, profiled=True)
    steps = head_steps + tail_steps
    busy_head, busy_tail = _busy_s(head), (_busy_s(tail) if tail is not None else 0.0)
    wall = head_wall + tail_wall
    out = {"steps": steps, "wall_s": round(wall, 4), "kernel_busy_s": round(busy_head + busy_tail, 4),
           "host_exposed_ms_per_step": round((wall - busy_head - busy_tail) / steps * 1e3, 3),
           "allocator": allocator}
    if head_steps:      # the prompt-carrying part: host time the GPU waits for, against the GPU's busy time
        out |= {"head_steps": head_steps, "head_busy_ms_per_step": round(busy_head / head_steps * 1e3, 3),
                "head_host_exposed_ms_per_step": round(max(head_wall - busy_head, 0) / head_steps * 1e3, 3),
                "head_host_exposed_ms_per_step_unprofiled":
                round(max(head_wall_u - busy_head, 0) / head_steps * 1e3, 3),
                "head_host_exposed_share_unprofiled": round(max(head_wall_u - busy_head, 0) / busy_head, 4)}
    if tail_steps:
        out |= {"decode_tail_host_exposed_ms_per_step_unprofiled":
                round(max(tail_wall_u - busy_tail, 0) / tail_steps * 1e3, 3),
                "decode_tail_steps": tail_steps, "decode_tail_sequences_at_start": tail_running,
                "decode_tail_wall_ms_per_step": round(tail_wall / tail_steps * 1e3, 3),
                "decode_tail_busy_ms_per_step": round(busy_tail / tail_steps * 1e3, 3),
                "decode_tail_host_exposed_ms_per_step": round(max(tail_wall - busy_tail, 0) / tail_steps * 1e3, 3)}
    return out


def host_profile(eng, w, a):
    import cProfile
    import io
    import pstats
    prof = cProfile.Profile()
    prof.enable()
    rows, _, _ = run_pass(eng, w, "c")
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(a.top)
    print(f"{a.preset} {a.requests} req {a.prompt}/{a.gen} {a.tag}: host profile of {len(rows)} steps "
          f"({sum(r[1] for r in rows) / 1e3:.2f} s of steps under cProfile)")
    print("\n".join(out.getvalue().splitlines()[:a.top + 12]))
    eng.close()


def sync_sites(eng, w, a):
    """Where the host waits for the GPU inside steps: torch's sync debug mode, each warning's call site
    (the innermost frames in fastgen code) counted over one pass."""
    import traceback
    import warnings
    from collections import Counter
    sites = Counter()

    def show(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1] if "fastgen" in f.filename]
        sites[" <- ".join(f"{f.filename.split('/')[-1]}:{f.lineno}({f.name})" for f in frames[-3:][::-1])] += 1

    old = warnings.showwarning
    warnings.showwarning = show
    warnings.simplefilter("always")
    torch.cuda.set_sync_debug_mode("warn")
    submit(eng, w, "s")
    steps = 0
    try:
        while eng.has_unfinished():
            eng.step()
            steps += 1
    finally:
        torch.cuda.set_sync_debug_mode(0)
        warnings.showwarning = old
    print(f"{a.preset} {a.requests} req {a.prompt}/{a.gen} {a.tag} async_scheduling={eng.async_scheduling}: "
          f"{sum(sites.values())} synchronising calls in {steps} steps")
    for site, n in sites.most_common(a.top):
        print(f"{n:>7}  {site}")
    eng.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="phi-2")
    ap.add_argument("--num-layers", type=int, default=None)
    ap.add_argument("--budget", type=int, default=2048)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=1200)
    ap.add_argument("--gen", type=int, default=60)
    ap.add_argument("--profile-every", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    ap.add_argument("--tag", default="")
    ap.add_argument("--equal-gen", action="store_true", help="every request generates exactly --gen tokens")
    ap.add_argument("--only-overlapped", action="store_true", help="skip passes 1 and 2")
    ap.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                    help="the engine's asynchronous step loop (default: the engine's choice, on for CUDA)")
    ap.add_argument("--top", type=int, default=15, help="kernels listed per step type")
    ap.add_argument("--cprofile", action="store_true",
                    help="only a host profile (cProfile) of one pass, steps synchronised: top functions by own time")
    ap.add_argument("--sync-sites", action="store_true",
                    help="only list where steps synchronise with the GPU (torch's sync debug mode), one pass")
    a = ap.parse_args()
    d = write_preset(a.preset, tempfile.mkdtemp(), a.num_layers)
    eng = LLMEngine(EngineConfig(str(d), device="cuda", dtype="bfloat16", load_format="dummy",
                                 max_ragged_batch_size=a.budget, gpu_memory_fraction=0.9,
                                 async_scheduling=a.async_scheduling))
    w = make_workload(a.requests, a.prompt, a.gen, 0, eng.model_config.vocab_size, eng.max_context)
    if a.equal_gen:     # every request exactly --gen tokens, its prompt cut to leave room for them
        w.gen_lens = [a.gen] * len(w.gen_lens)
        w.prompts = [p[:eng.max_context - a.gen - 1] for p in w.prompts]
    warm_up(eng, w)
    run_pass(eng, w, "warm")                 # a first pass meets kernel variants a server has long loaded
    if a.cprofile:
        host_profile(eng, w, a)
        return
    if a.sync_sites:
        sync_sites(eng, w, a)
        return
    over = overlapped_pass(eng, w, "o")
    print(f"{a.preset} budget {a.budget} {a.requests} req {a.prompt}/{a.gen} {a.tag} async_scheduling="
          f"{eng.async_scheduling}, no synchronise between steps: {json.dumps(over)}")
    if a.only_overlapped:
        if a.json:
            append_jsonl(a.json, [{"preset": a.preset, "budget": a.budget, "requests": a.requests,
                                   "prompt": a.prompt, "gen": a.gen, "tag": a.tag, "overlapped": over}])
        eng.close()
        return
    rows, _, _ = run_pass(eng, w, "t")
    _, kernels, by_name = run_pass(eng, w, "p", a.profile_every)
    summary = {"preset": a.preset, "budget": a.budget, "requests": a.requests, "prompt": a.prompt, "gen": a.gen,
               "tag": a.tag, "total_s": round(sum(r[1] for r in rows) / 1e3, 3), "steps": {}, "overlapped": over}
    print(f"{a.preset} budget {a.budget} {a.requests} req {a.prompt}/{a.gen} {a.tag}: {len(rows)} steps, "
          f"{summary['total_s']:.2f} s of steps")
    hdr = f"{'step':<8}{'n':>5}{'wall ms':>9}{'gpu ms':>8}{'host-only':>10}" + "".join(
        f"{k:>18}" for k, _ in KINDS) + f"{'other':>8}"
    print(hdr)
    for kind in ("prefill", "decode"):
        rs = [r for r in rows if r[0] == kind]
        if not rs:
            continue
        wall = sum(r[1] for r in rs) / len(rs)
        gpu = sum(r[2] for r in rs) / len(rs)
        k = kernels[kind]
        n = max(k.get("#profiled", 0), 1)
        parts = {name: k.get(name, 0.0) / n for name, _ in KINDS} | {"other": k.get("other", 0.0) / n}
        busy = sum(parts.values())
        launches = k.get("#kernels", 0) / n
        summary["steps"][kind] = {"n": len(rs), "wall_ms": round(wall, 3), "gpu_event_ms": round(gpu, 3),
                                  "kernel_busy_ms": round(busy, 3), "host_only_ms": round(max(wall - busy, 0), 3),
                                  "kernels_per_step": round(launches, 1),
                                  "gpu_gaps_ms": round(max(gpu - busy, 0), 3),
                                  "kernel_ms": {p: round(v, 3) for p, v in parts.items()},
                                  "top_kernels_ms": {nm: round(v / n, 3) for nm, v in sorted(
                                      by_name[kind].items(), key=lambda x: -x[1])[:a.top]}}
        print(f"{kind:<8}{len(rs):>5}{wall:>9.2f}{gpu:>8.2f}{max(wall - busy, 0):>10.2f}" + "".join(
            f"{parts[name]:>18.2f}" for name, _ in KINDS) + f"{parts['other']:>8.2f}"
              + f"   kernels/step {launches:.0f}, gaps between kernels {max(gpu - busy, 0):.2f} ms")
    for kind, s in summary["steps"].items():
        print(f"top kernels per {kind} step (ms):")
        for nm, v in s["top_kernels_ms"].items():
            print(f"  {v:8.3f}  {nm}")
    if a.json:
        append_jsonl(a.json, [summary])
    eng.close()


if __name__ == "__main__":
    main()
