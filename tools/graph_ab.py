"""A/B of the decode-graph path: per-step wall (host) and GPU time of decode-only and prefill-carrying steps,
graphs off and on, in one process (order off, on, off). Also the pieces of one graph step.
    python3 tools/graph_ab.py phi-2 [num_requests] [budget]"""
import gc
import sys
import tempfile
import time

import torch

from fastgen_core.bench.offline import _params, warm_up
from fastgen_core.bench.workload import make_workload, write_preset
from fastgen_core.config import EngineConfig
from fastgen_core.engine.engine import LLMEngine

preset = sys.argv[1] if len(sys.argv) > 1 else "phi-2"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 64
budget = int(sys.argv[3]) if len(sys.argv) > 3 else 2048
d = write_preset(preset, tempfile.mkdtemp())


def run(graphs: bool):
    eng = LLMEngine(EngineConfig(str(d), device="cuda", dtype="bfloat16", load_format="dummy",
                                 max_ragged_batch_size=budget, gpu_memory_fraction=0.4, cuda_graphs=graphs))
    w = make_workload(n, 1200, 60, 0, eng.model_config.vocab_size, eng.max_context)
    warm_up(eng, w)
    for i, (p, g) in enumerate(zip(w.prompts, w.gen_lens)):
        eng.add_request(p, _params(g), request_id=f"p{i}")
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    dec, pre = [], []
    t_all = time.perf_counter()
    while eng.has_unfinished():
        torch.cuda.synchronize()
        g0 = eng.stats()["graph_steps"]
        p0 = eng.counters["prompt_tokens"]
        t = time.perf_counter()
        e0.record()
        eng.step()
        e1.record()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t
        row = (wall * 1e3, e0.elapsed_time(e1), eng.stats()["graph_steps"] > g0)
        (pre if eng.counters["prompt_tokens"] != p0 else dec).append(row)
    total = time.perf_counter() - t_all
    avg = lambda xs, k: sum(x[k] for x in xs) / max(len(xs), 1)  # noqa: E731
    print(f"AB {preset} n {n} graphs {graphs}: {total:.2f} s (synced steps); prefill-carrying {len(pre)} "
          f"wall {avg(pre, 0):.2f} ms gpu {avg(pre, 1):.2f} ms; decode-only {len(dec)} (graph {sum(r[2] for r in dec)}) "
          f"wall {avg(dec, 0):.2f} ms gpu {avg(dec, 1):.2f} ms", flush=True)
    global pieces_done
    if graphs and not pieces_done:     # pieces of graph steps at a few batch sizes
        pieces_done = True
        from fastgen_core.engine.scheduler import ScheduledBatch, ScheduledChunk
        from fastgen_core.engine.sequence import Sequence
        gr = eng.runner.graphs
        for bsz in (1, 8, 32, 128):
            seqs = []
            for i in range(bsz):
                s = Sequence(10_000 + i, f"x{i}", list(range(1, 600)), 1)
                s.block_table = eng.allocator.allocate(eng.allocator.blocks_for(600))
                seqs.append(s)
            batch = ScheduledBatch([ScheduledChunk(s, 598, 1, True) for s in seqs])
            for mode in ("graph", "eager"):
                saved = eng.runner.graphs
                eng.runner.graphs = gr if mode == "graph" else None
                for _ in range(3):
                    eng.runner.forward(batch)
                torch.cuda.synchronize()
                t = time.perf_counter()
                for _ in range(20):
                    eng.runner.forward(batch)
                t_host = (time.perf_counter() - t) / 20
                torch.cuda.synchronize()
                t_sync = (time.perf_counter() - t) / 20
                eng.runner.graphs = saved
                print(f"AB   forward only, {bsz:>3} decodes, {mode}: host {t_host * 1e3:.2f} ms/step, "
                      f"with sync {t_sync * 1e3:.2f} ms/step", flush=True)
            for s in seqs:
                eng.allocator.free(s.block_table)
    eng.close()
    del eng
    gc.collect()
    torch.cuda.empty_cache()


pieces_done = False
for g in (False, True, False, True):
    run(g)
