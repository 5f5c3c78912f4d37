"""The peer: the same workload through transformers, in the same process and run.

static: ``generate`` in fixed batches of prompts sorted by length (left padded), each batch run for its
longest generation (the useful tokens are counted, as in hf_baseline.py). continuous: transformers'
continuous batching manager (``continuous_batching_context_manager``), all requests submitted at t=0.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .workload import Workload


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_peer(model_dir: str | Path, device: torch.device, dtype: torch.dtype, dummy: bool, seed: int = 0):
    """The transformers model for ``model_dir``: random weights at full size when ``dummy`` (as ours)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(str(model_dir), attn_implementation="sdpa")
    torch.manual_seed(seed)
    if dummy:
        with torch.device(device):
            m = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    else:
        m = AutoModelForCausalLM.from_pretrained(str(model_dir), config=cfg, dtype=dtype).to(device)
    return m.eval()


@torch.no_grad()
def hf_static(m, workload: Workload, batch_size: int) -> dict:
    from transformers import GenerationConfig
    prompts, gens = workload.prompts, workload.gen_lens
    device = m.device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    _sync(device)
    t0 = time.perf_counter()
    useful = 0
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        L = max(len(prompts[i]) for i in idx)
        G = max(gens[i] for i in idx)
        ids = torch.zeros(len(idx), L, dtype=torch.long)
        mask = torch.zeros(len(idx), L, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, L - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[r, L - len(prompts[i]):] = 1
        gc = GenerationConfig(max_new_tokens=G, min_new_tokens=G, do_sample=False, eos_token_id=None,
                              pad_token_id=0)
        m.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gc)
        useful += sum(gens[i] for i in idx)
    _sync(device)
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 4), "gen_tokens": useful, "gen_tok_s": round(useful / wall, 2),
            "total_tok_s": round((useful + workload.prompt_tokens) / wall, 2), "batch_size": batch_size}


@torch.no_grad()
def hf_continuous(m, workload: Workload, timeout: float = 600.0) -> dict:
    from transformers import GenerationConfig
    prompts, gens = workload.prompts, workload.gen_lens
    gc = GenerationConfig(max_new_tokens=max(gens), do_sample=False, eos_token_id=-1, pad_token_id=0)
    with m.continuous_batching_context_manager(generation_config=gc, block=True, timeout=10) as mgr:
        _sync(m.device)
        t0 = time.perf_counter()
        for i, (p, g) in enumerate(zip(prompts, gens)):
            mgr.add_request(p, request_id=f"r{i}", max_new_tokens=g)
        done, got = 0, 0
        while done < len(prompts):
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"continuous batching took over {timeout} s")
            r = mgr.get_result(timeout=5)
            if r is None:
                if not mgr.is_running():
                    raise RuntimeError("transformers' continuous batching manager stopped")
                continue
            if r.is_finished():
                done += 1
                got += len(r.generated_tokens)
        _sync(m.device)
        wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 4), "gen_tokens": got, "gen_tok_s": round(got / wall, 2),
            "total_tok_s": round((got + workload.prompt_tokens) / wall, 2)}


def run_peer(m, workload: Workload, modes=("static", "continuous"), static_batch_sizes=(64,)) -> list[dict]:
    """One record per peer mode; a mode that fails (OOM, an API missing) is recorded with its error."""
    out = []
    for mode in modes:
        for bs in (static_batch_sizes if mode == "static" else (None,)):
            rec = {"engine": f"transformers-{mode}"}
            try:
                rec.update(hf_static(m, workload, bs) if mode == "static" else hf_continuous(m, workload))
            except Exception as e:  # noqa: BLE001  (the peer's failure is a result, not a crash)
                if isinstance(e, torch.OutOfMemoryError):
                    torch.cuda.empty_cache()
                rec.update({"error": f"{type(e).__name__}: {str(e)[:300]}", "batch_size": bs})
            out.append(rec)
    return out


def warm_peer(m, workload: Workload) -> None:
    hf_static(m, Workload(workload.prompts[:2], [2, 2], workload.mean_prompt, 2, workload.seed), 2)
