"""Where a step's time goes: host vs device, by op (torch.profiler), for a bench preset.

    python3 tests/gpu/profile_steps.py phi-2 [budget] [num_requests]
Prints per-step wall vs GPU time for prefill-carrying and decode-only steps, then the top ops.
"""
import cProfile
import io
import pstats
import sys
import tempfile
import time

import torch

from fastgen_core.bench.offline import _params, warm_up
from fastgen_core.bench.workload import make_workload, write_preset
from fastgen_core.config import EngineConfig
from fastgen_core.engine.engine import LLMEngine

preset = sys.argv[1] if len(sys.argv) > 1 else "phi-2"
budget = int(sys.argv[2]) if len(sys.argv) > 2 else 768
n = int(sys.argv[3]) if len(sys.argv) > 3 else 32
d = write_preset(preset, tempfile.mkdtemp())
eng = LLMEngine(EngineConfig(str(d), device="cuda", dtype="bfloat16", load_format="dummy",
                             max_ragged_batch_size=budget, gpu_memory_fraction=0.5))
w = make_workload(n, 1200, 60, 0, eng.model_config.vocab_size)
warm_up(eng, w)
for i, (p, g) in enumerate(zip(w.prompts, w.gen_lens)):
    eng.add_request(p, _params(g), request_id=f"p{i}")
rows = []
e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
t_all = time.perf_counter()
prof_steps = 0
prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA])
host = cProfile.Profile()         # Python-level host time of decode-only steps (the last 40 steps)
host_steps = 0
while eng.has_unfinished():
    decoding = rows and len(rows) > 1 and rows[-1][2] == rows[-2][2] and len(rows) >= 100
    sched_before = eng.scheduler
    torch.cuda.synchronize()
    t = time.perf_counter()
    e0.record()
    if 20 <= len(rows) < 26:
        prof.__enter__() if len(rows) == 20 else None
    if decoding:
        host.enable()
    outs = eng.step()
    if decoding:
        host.disable()
        host_steps += 1
    e1.record()
    torch.cuda.synchronize()
    if len(rows) == 25:
        prof.__exit__(None, None, None)
    wall = time.perf_counter() - t
    rows.append((wall, e0.elapsed_time(e1) / 1e3, eng.counters["prompt_tokens"]))
total = time.perf_counter() - t_all
pre = [r for i, r in enumerate(rows) if i == 0 or r[2] != rows[i - 1][2]]
dec = [r for i, r in enumerate(rows) if i > 0 and r[2] == rows[i - 1][2]]
avg = lambda xs, k: sum(x[k] for x in xs) / max(len(xs), 1) * 1e3  # noqa: E731
print(f"{preset} budget {budget} n {n}: {len(rows)} steps in {total:.2f}s; prefill-carrying {len(pre)} steps "
      f"wall {avg(pre, 0):.1f} ms gpu {avg(pre, 1):.1f} ms; decode-only {len(dec)} steps wall {avg(dec, 0):.1f} ms "
      f"gpu {avg(dec, 1):.1f} ms")
ka = prof.key_averages()
print(ka.table(sort_by="self_cuda_time_total", row_limit=18, max_name_column_width=60))
print(ka.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
buf = io.StringIO()
pstats.Stats(host, stream=buf).sort_stats("tottime").print_stats(25)
print(f"cProfile of {host_steps} decode-only steps (host, by own time)")
print(buf.getvalue()[:6000])
