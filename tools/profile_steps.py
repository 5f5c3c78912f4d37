"""Where a step's time goes, by step type, for a bench preset on a GPU: wall time, GPU busy time, and the
GPU time by kind of kernel (GEMM, attention, elementwise/norm, copy/index), plus the host time the GPU
waits for (wall - busy).

    python3 tools/profile_steps.py --preset phi-2 --budget 2048 --requests 128 [--prompt 1200 --gen 60]

Pass 1 times every step with a synchronise on each side (wall) and CUDA events (GPU). Pass 2 replays the
same workload under torch.profiler, one profile per sampled step, and sums its kernels' durations by kind.
A step is "prefill" when it carries prompt tokens, "decode" when every row is a decode.
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections import defaultdict

import torch

from fastgen_core.bench.offline import _params, warm_up
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
                    by_name[kind][ev.name[:90]] += us / 1e3
            kernels[kind]["#profiled"] += 1
        rows.append((kind, wall * 1e3, e0.elapsed_time(e1)))
        i += 1
    return rows, kernels, by_name


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
    a = ap.parse_args()
    d = write_preset(a.preset, tempfile.mkdtemp(), a.num_layers)
    eng = LLMEngine(EngineConfig(str(d), device="cuda", dtype="bfloat16", load_format="dummy",
                                 max_ragged_batch_size=a.budget, gpu_memory_fraction=0.9))
    w = make_workload(a.requests, a.prompt, a.gen, 0, eng.model_config.vocab_size, eng.max_context)
    warm_up(eng, w)
    run_pass(eng, w, "warm")                 # a first pass meets kernel variants a server has long loaded
    rows, _, _ = run_pass(eng, w, "t")
    _, kernels, by_name = run_pass(eng, w, "p", a.profile_every)
    summary = {"preset": a.preset, "budget": a.budget, "requests": a.requests, "prompt": a.prompt, "gen": a.gen,
               "tag": a.tag, "total_s": round(sum(r[1] for r in rows) / 1e3, 3), "steps": {}}
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
        summary["steps"][kind] = {"n": len(rs), "wall_ms": round(wall, 3), "gpu_event_ms": round(gpu, 3),
                                  "kernel_busy_ms": round(busy, 3), "host_only_ms": round(max(wall - busy, 0), 3),
                                  "kernel_ms": {p: round(v, 3) for p, v in parts.items()},
                                  "top_kernels_ms": {nm: round(v / n, 3) for nm, v in sorted(
                                      by_name[kind].items(), key=lambda x: -x[1])[:15]}}
        print(f"{kind:<8}{len(rs):>5}{wall:>9.2f}{gpu:>8.2f}{max(wall - busy, 0):>10.2f}" + "".join(
            f"{parts[name]:>18.2f}" for name, _ in KINDS) + f"{parts['other']:>8.2f}")
    for kind, s in summary["steps"].items():
        print(f"top kernels per {kind} step (ms):")
        for nm, v in s["top_kernels_ms"].items():
            print(f"  {v:8.3f}  {nm}")
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(summary) + "\n")
    eng.close()


if __name__ == "__main__":
    main()
