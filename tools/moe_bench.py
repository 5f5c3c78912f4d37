"""Mixtral-8x7B's expert layer at decode-sized steps on a GPU: the grouped_mm path against the Triton expert GEMMs
(layers/moe_triton.py, the default for decode-sized steps) over a few tile choices, each timed as a CUDA graph replay
with the weights of 8 layers (22 GB) cycled past the L2. Prints ms per layer and the TB/s of expert weights read.

    python3 tools/moe_bench.py [--json out.jsonl]
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from graph_timing import graph_ms_per_layer

from fastgen_core.layers import moe, moe_triton

E, H, I, K_TOP, LAYERS = 8, 4096, 14336, 2, 8


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--tokens", default="8,16,32,64,128")
    a = ap.parse_args()
    dt = torch.bfloat16
    weights = [((torch.randn(E, 2 * I, H, device="cuda") / H ** 0.5).to(dt),
                (torch.randn(E, H, I, device="cuda") / I ** 0.5).to(dt)) for _ in range(LAYERS)]
    expert_bytes = 3 * H * I * 2
    tiles = [None, (64, 128, 4, 4), (128, 64, 4, 4), (64, 256, 8, 3), (32, 128, 4, 5), (128, 128, 8, 3)]
    base_tiles = moe_triton._tiles
    records = []
    for t in (int(v) for v in a.tokens.split(",")):
        x = torch.randn(t, H, device="cuda").to(dt)
        ids = torch.stack([torch.randperm(E, device="cuda")[:K_TOP] for _ in range(t)])
        w = torch.softmax(torch.randn(t, K_TOP, device="cuda"), -1)
        touched = int(torch.unique(ids).numel())
        ms = graph_ms_per_layer(lambda layer: moe.grouped_experts_ref(x, *weights[layer], w, ids, F.silu), LAYERS)
        rec = {"tokens": t, "experts_touched": touched, "grouped_mm_ms": round(ms, 4),
               "grouped_mm_TBps": round(touched * expert_bytes / ms / 1e9, 3), "triton": {}}
        want = moe.grouped_experts_ref(x, *weights[0], w, ids, F.silu).float()
        for tile in tiles:
            moe_triton._tiles = base_tiles if tile is None else (lambda n, k, tile=tile: tile)
            try:
                got = moe_triton.experts_triton(x, *weights[0], w, ids, F.silu).float()
                err = ((got - want).norm() / want.norm()).item()
                ms = graph_ms_per_layer(
                    lambda layer: moe_triton.experts_triton(x, *weights[layer], w, ids, F.silu), LAYERS)
                rec["triton"][str(tile or "default")] = {"ms": round(ms, 4), "rel_err": err,
                                                         "TBps": round(touched * expert_bytes / ms / 1e9, 3)}
            except Exception as exc:     # a tile Triton cannot build here: say so and go on
                rec["triton"][str(tile or "default")] = f"{type(exc).__name__}: {str(exc)[:120]}"
        moe_triton._tiles = base_tiles
        print(json.dumps(rec), flush=True)
        records.append(rec)
    if a.json:
        with open(a.json, "a") as f:
            for r in records:
                f.write(json.dumps(r | {"time": time.strftime("%Y%m%dT%H%M%S")}) + "\n")


if __name__ == "__main__":
    main()
