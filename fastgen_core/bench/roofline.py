"""The floor: the card's ceilings measured in this process, and the least time a workload can take.

Two floors, each FLOPs at the measured GEMM rate plus bytes at the measured copy bandwidth:

floor_linear = 2 x active parameters x all tokens / GEMM rate  +  decode steps x weight bytes / bandwidth

(all tokens = prompt + generated; decode steps = the longest generation, since every step must read the
weights once; active parameters are what the family's config says a token uses, ``active_params``: for MoE
only the top-k experts) -- the linear layers alone, the floor hf_baseline.py reports;

floor = floor_linear + attention FLOPs / GEMM rate + K/V bytes / bandwidth

which adds what attention must do however it is implemented: every prompt token attends causally to the
tokens before it (4 x layers x query heads x head_dim FLOPs per (query, key) pair: QK^T and PV), and every
decode step reads the K/V of each running sequence's whole context once (layers x KV heads x head_dim x 2 x
dtype bytes per cached token) and does the same FLOPs per key. A sliding window caps the keys each query
sees. Without GQA (Phi-2, Llama-2-7B) those K/V reads are tens of GB per run: the full floor says so
instead of leaving them in the gap.
"""
from __future__ import annotations

import math
import time

import torch

from ..layers.sharded import full_shape


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


def count_params(model: torch.nn.Module, model_config) -> dict:
    """Total and active parameters and weight bytes of the whole model (tied weights counted once; under
    tensor parallelism the full tensors this rank holds slices of). The family's config says how many of them
    a token uses (``DecoderConfig.active_params``: all of them, unless, say, a mixture of experts runs only
    some experts per token)."""
    seen, total, nbytes = set(), 0, 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        n = math.prod(full_shape(p))
        total += n
        nbytes += n * p.element_size()
    return {"params": total, "active_params": int(model_config.active_params(total)), "weight_bytes": nbytes}


def floor_seconds(active_params: int, weight_bytes: int, prompt_tokens: int, gen_tokens: int, decode_steps: int,
                  ceilings: dict) -> float:
    """The linear floor (see the module docstring)."""
    flops = 2 * active_params * (prompt_tokens + gen_tokens)
    return flops / (ceilings["gemm_TFLOPs"] * 1e12) + decode_steps * weight_bytes / (ceilings["copy_TBps"] * 1e12)


def attention_geometry(model_config, kv_dtype: torch.dtype) -> dict:
    """What attention's share of the floor depends on, from a family's DecoderConfig (the whole model)."""
    return {"layers": model_config.num_hidden_layers, "q_heads": model_config.num_attention_heads,
            "kv_heads": model_config.num_key_value_heads, "head_dim": model_config.head_dim,
            "window": model_config.sliding_window or None,
            "kv_bytes_per_value": torch.empty((), dtype=kv_dtype).element_size()}


def _keys_seen(first: int, last: int, window: int | None) -> int:
    """Sum over query positions p in [first, last] of the keys p sees: min(p + 1, window)."""
    if last < first:
        return 0
    tri = lambda n: n * (n + 1) // 2          # noqa: E731  sum of 1..n
    if not window:
        return tri(last + 1) - tri(first)
    capped_from = max(first, window - 1)     # positions >= window - 1 see exactly `window` keys
    below = tri(min(last, capped_from - 1) + 1) - tri(first) if first < capped_from else 0
    return below + max(0, last - capped_from + 1) * window


def attention_cost(geometry: dict, prompt_lens: list[int], gen_lens: list[int]) -> dict:
    """Attention FLOPs of every prompt (causal) and of every decode, and the K/V bytes the decodes read.

    A request with prompt P and g generated tokens runs g - 1 decode steps (its first token comes from the
    prompt's last row); the decode that produces token j + 1 has a query at position P + j - 1 over P + j keys."""
    g = geometry
    per_key_flops = 4 * g["layers"] * g["q_heads"] * g["head_dim"]
    per_key_bytes = 2 * g["layers"] * g["kv_heads"] * g["head_dim"] * g["kv_bytes_per_value"]
    prompt_keys = decode_keys = 0
    for p, n in zip(prompt_lens, gen_lens):
        prompt_keys += _keys_seen(0, p - 1, g["window"])
        decode_keys += _keys_seen(p, p + n - 2, g["window"])
    return {"attention_flops": per_key_flops * (prompt_keys + decode_keys), "kv_read_bytes": per_key_bytes * decode_keys,
            "prompt_attention_flops": per_key_flops * prompt_keys}


def floors(active_params: int, weight_bytes: int, geometry: dict, prompt_lens: list[int], gen_lens: list[int],
           ceilings: dict) -> dict:
    """``floor_linear_s`` and ``floor_s`` (see the module docstring) for one workload, with their parts."""
    linear = floor_seconds(active_params, weight_bytes, sum(prompt_lens), sum(gen_lens), max(gen_lens), ceilings)
    att = attention_cost(geometry, prompt_lens, gen_lens)
    extra = att["attention_flops"] / (ceilings["gemm_TFLOPs"] * 1e12) + att["kv_read_bytes"] / (ceilings["copy_TBps"] * 1e12)
    return {"floor_linear_s": linear, "floor_s": linear + extra, **att}
