"""Run the Triton MoE expert GEMMs (layers/moe_triton.py) under Triton's interpreter on the CPU and print their
relative errors against the every-expert float64 oracle as one JSON object (test_moe_triton_interpreted.py runs
this in a fresh process: TRITON_INTERPRET must be set before Triton is first imported)."""
import json
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from attention_interpreted import _index_scalars_compat  # noqa: E402

CASES = {  # name: (tokens, top_k, experts, hidden, intermediate, experts the tokens may pick)
    "tails-in-n-and-k": (5, 2, 4, 48, 40, 3),          # K 48 < BLOCK_K, N 80 over two BLOCK_N tiles; expert 3 idle
    "one-expert-over-three-blocks": (37, 2, 8, 64, 32, 2),   # ~37 rows of one expert: three BLOCK_M blocks
    "decode-like": (64, 2, 8, 64, 96, 8),
    "top-1": (9, 1, 4, 32, 16, 4),
}


def run(name, dtype):
    from fastgen_core.layers.moe import moe_dense_ref
    from fastgen_core.layers.moe_triton import align_by_expert, experts_triton
    t, k, e, h, i, pick = CASES[name]
    g = torch.Generator().manual_seed(t * 100 + e)
    x = torch.randn(t, h, generator=g)
    gate_up = torch.randn(e, 2 * i, h, generator=g) / h ** 0.5
    down = torch.randn(e, h, i, generator=g) / i ** 0.5
    ids = torch.stack([torch.randperm(pick, generator=g)[:k] for _ in range(t)])
    w = torch.softmax(torch.randn(t, k, generator=g), -1)
    rows, block_expert, position = align_by_expert(ids, e)
    # every pair sits once in its expert's padded run, and every block of a run names that run's expert
    assert sorted(rows[rows < t * k].tolist()) == list(range(t * k))
    assert torch.equal(rows[position], torch.arange(t * k))
    assert all(int(block_expert[p // 16]) == int(ids.reshape(-1)[rows[p]]) for p in position.tolist())
    got = experts_triton(x.to(dtype), gate_up.to(dtype), down.to(dtype), w, ids, F.silu).double()
    want = moe_dense_ref(x.double(), gate_up.double(), down.double(), w.double(), ids, F.silu)
    return ((got - want).norm() / want.norm()).item()


if __name__ == "__main__":
    _index_scalars_compat()
    out = {}
    for name in CASES:
        for dtype in (torch.float32, torch.float16):
            key = f"{name}/{str(dtype).split('.')[-1]}"
            try:
                out[key] = run(name, dtype)
            except Exception as exc:  # reported per case
                out[key] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(out))
