"""The floor: the card's ceilings measured in this process, and the least time a workload can take.

floor = 2 x active parameters x all tokens / GEMM rate  +  decode steps x weight bytes / copy bandwidth

(all tokens = prompt + generated; decode steps = the longest generation, since every step must read the
weights once; for MoE, active parameters count only the top-k experts). It ignores attention and KV
reads, so achieved/floor > 1 also measures those; it is the same floor hf_baseline.py reports.
"""
from __future__ import annotations

import math
import time

import torch

from .. import parallel


def _timed(fn, reps: int, device: torch.device) -> float:
    """Seconds per call: device events on CUDA, a synchronised wall clock elsewhere."""
    for _ in range(2):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(reps):
            fn()
        e1.record()
        torch.cuda.synchronize(device)
        return e0.elapsed_time(e1) / 1e3 / reps
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def measure_ceilings(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Copy bandwidth (bytes read + written) and GEMM rate, on random data (not zeros)."""
    cuda = device.type == "cuda"
    n = (2 << 30) // 2 if cuda else (64 << 20) // 4
    bufs = [torch.empty(n, dtype=dtype if cuda else torch.float32, device=device).normal_()]
    bufs.append(torch.empty_like(bufs[0]))
    s = _timed(lambda: bufs[1].copy_(bufs[0]), 20 if cuda else 5, device)
    bw = 2 * bufs[0].numel() * bufs[0].element_size() / s
    bufs.clear()                                  # free the copy buffers before the GEMM operands
    m = 8192 if cuda else 1024
    gd = dtype if cuda else torch.float32
    bufs += [torch.randn(m, m, dtype=gd, device=device), torch.randn(m, m, dtype=gd, device=device)]
    s = _timed(lambda: bufs[0] @ bufs[1], 10 if cuda else 3, device)
    bufs.clear()
    if cuda:
        torch.cuda.empty_cache()
    return {"copy_TBps": round(bw / 1e12, 3), "gemm_TFLOPs": round(2 * m ** 3 / s / 1e12, 2),
            "gemm_dtype": str(gd).removeprefix("torch.")}


def count_params(model: torch.nn.Module, hf_config: dict) -> dict:
    """Total and active parameters and weight bytes of the whole model (tied weights counted once; under
    tensor parallelism the full tensors this rank holds slices of)."""
    seen, total, nbytes = set(), 0, 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        n = math.prod(parallel.full_shape(p))
        total += n
        nbytes += n * p.element_size()
    active = total
    experts = hf_config.get("num_local_experts") or hf_config.get("num_experts")
    top_k = hf_config.get("num_experts_per_tok")
    if experts and top_k:
        per_expert = 3 * hf_config["hidden_size"] * hf_config.get("moe_intermediate_size",
                                                                  hf_config["intermediate_size"])
        active = total - hf_config["num_hidden_layers"] * experts * per_expert * (1 - top_k / experts)
    return {"params": total, "active_params": int(active), "weight_bytes": nbytes}


def floor_seconds(active_params: int, weight_bytes: int, prompt_tokens: int, gen_tokens: int, decode_steps: int,
                  ceilings: dict) -> float:
    flops = 2 * active_params * (prompt_tokens + gen_tokens)
    return flops / (ceilings["gemm_TFLOPs"] * 1e12) + decode_steps * weight_bytes / (ceilings["copy_TBps"] * 1e12)
