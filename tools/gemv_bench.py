"""The decode GEMV (kernels/gemv.cu) against cuBLAS (torch.nn.functional.linear) on the linear layers of
Phi-2 and Llama-2-7B at 1 and 2 tokens per forward: weight bytes read per second, every kernel configuration.

    python3 tools/gemv_bench.py [--json FILE]

Each timing cycles through enough copies of the weight (> 4x the 50 MB L2) that every call reads it from
HBM; the calls are captured in a CUDA graph (100 calls) and its replays timed between two CUDA events.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from fastgen_core.bench.cli import append_jsonl
from fastgen_core.layers import linear as L

SHAPES = {  # name: (K, N)
    "phi2.qkv": (2560, 7680), "phi2.dense": (2560, 2560), "phi2.fc1": (2560, 10240), "phi2.fc2": (10240, 2560),
    "phi2.lm_head": (2560, 51200), "llama7b.qkv": (4096, 12288), "llama7b.o": (4096, 4096),
    "llama7b.gate_up": (4096, 22016), "llama7b.down": (11008, 4096), "llama7b.lm_head": (4096, 32000),
}


def timed(fn, weights, calls=100):
    """Seconds per call, from replays of a CUDA graph of ``calls`` calls (a launch from the host takes longer
    than most of these kernels run)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for w in weights[:2]:
            fn(w)                                  # compile and warm outside the capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(calls):
            fn(weights[i % len(weights)])
    g.replay()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(3):
        g.replay()
    e1.record()
    torch.cuda.synchronize()
    return e0.elapsed_time(e1) / 1e3 / (3 * calls)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--rows", default="1,2")
    a = ap.parse_args()
    dtype = torch.bfloat16
    records = []
    for name, (k, n) in SHAPES.items():
        nbytes = n * k * 2
        copies = max(4, -(-200_000_000 // nbytes))
        weights = [torch.randn(n, k, device="cuda", dtype=dtype) for _ in range(copies)]
        bias = torch.randn(n, device="cuda", dtype=dtype) if name.startswith("phi2") and "lm_head" not in name else None
        for m in map(int, a.rows.split(",")):
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            rec = {"shape": name, "K": k, "N": n, "M": m,
                   "cublas_tb_s": round(nbytes / timed(lambda w: F.linear(x, w, bias), weights) / 1e12, 3)}
            for r, u, ks in L.CONFIGS:
                for warps in (4, 8):
                    s = timed(lambda w: L.gemv(x, w, bias, (r, u, warps, ks)), weights)
                    rec[f"r{r}u{u}w{warps}s{ks}"] = round(nbytes / s / 1e12, 3)
            best = max((v, c) for c, v in rec.items() if c.startswith("r"))
            rec["best"], rec["default"] = best[1], "r{}u{}w{}s{}".format(*L.gemv_config(n, k))
            records.append(rec)
            print(f"{name:16} M={m} cuBLAS {rec['cublas_tb_s']:.2f} TB/s  gemv default {rec[rec['default']]:.2f}  "
                  f"best {best[1]} {best[0]:.2f}", flush=True)
        del weights
    if a.json:
        append_jsonl(a.json, records)


if __name__ == "__main__":
    main()
