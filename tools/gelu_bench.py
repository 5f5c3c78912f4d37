"""Phi-2's fc1 + gelu_new at prompt- and decode-sized steps on a GPU: fc1's GEMM then the gelu_new kernel
(what the kernel setting ``fc1_gelu_new=gemv_gelu_new`` selects at these sizes) against one GEMM with bias and GELU
as its cuBLASLt epilogue (fastgen_phi.model.gemm_gelu_new, the default). Each timed as a CUDA graph replay over 8 layers' weights (cycled
past the L2). Prints ms per layer and the kernels each path launches.

    python3 tools/gelu_bench.py [--json out.jsonl] [--rows 128,512,2048]
"""
import argparse
import json

import torch
import torch.nn.functional as F
from graph_timing import graph_ms_per_layer

from fastgen_phi import model as fp

H, I, LAYERS = 2560, 10240, 8


def kernels_of(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn(0)
        torch.cuda.synchronize()
    return [e.name[:60] for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--rows", default="128,512,2048")
    a = ap.parse_args()
    dev, dt = "cuda", torch.bfloat16
    ws = [torch.randn(I, H, device=dev, dtype=dt) / H ** 0.5 for _ in range(LAYERS)]
    bs = [torch.randn(I, device=dev, dtype=dt) for _ in range(LAYERS)]
    out = []
    for rows in map(int, a.rows.split(",")):
        x = torch.randn(rows, H, device=dev, dtype=dt)
        paths = {"fc1_then_gelu_new": lambda i: fp.gelu_new(F.linear(x, ws[i], bs[i])),
                 "gemm_gelu_epilogue": lambda i: fp.gemm_gelu_new(x, ws[i], bs[i])}
        line = {"rows": rows, "gemm_ms_at_800_tflops": round(2 * rows * H * I / 800e12 * 1e3, 4)}
        for name, fn in paths.items():
            ms = graph_ms_per_layer(fn, LAYERS)
            line[name + "_ms"] = round(ms, 4)
            line[name + "_kernels"] = kernels_of(fn)
        print(json.dumps(line))
        out.append(line)
    if a.json:
        with open(a.json, "a") as f:
            for line in out:
                f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
