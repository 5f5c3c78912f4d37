"""Engine start (weights onto the GPU) from a sharded safetensors checkpoint and from a fastgen snapshot of
it, in one process: the snapshot skips the family's weight map, QKV/expert fusing and conversions.

    python3 tools/load_time.py --preset llama-2-7b [--json FILE]

Writes the checkpoint (transformers' save_pretrained, 5 GB shards, random weights at the preset's shapes)
and the snapshot under --dir, then times LLMEngine(...) start for each, twice, alternating (both read from
the page cache: the files were just written).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from fastgen_core.bench.cli import append_jsonl
from fastgen_core.bench.workload import write_preset
from fastgen_core.config import EngineConfig
from fastgen_core.engine.engine import LLMEngine


def start(model_dir: Path) -> tuple[float, LLMEngine]:
    torch.cuda.synchronize()
    t = time.perf_counter()
    eng = LLMEngine(EngineConfig(str(model_dir), device="cuda", dtype="bfloat16", cuda_graphs=False,
                                 num_kv_blocks=64))
    torch.cuda.synchronize()
    return time.perf_counter() - t, eng


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama-2-7b")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    root = Path(a.dir or tempfile.mkdtemp(prefix="fastgen-load-"))
    cfg_dir = write_preset(a.preset, root / "config")
    hf_dir, snap_dir = root / "hf", root / "snapshot"
    from transformers import AutoConfig, AutoModelForCausalLM
    t = time.perf_counter()
    with torch.device("cuda"):
        m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cfg_dir), dtype=torch.bfloat16)
    m.save_pretrained(hf_dir, max_shard_size="5GB")
    del m
    torch.cuda.empty_cache()
    write_s = time.perf_counter() - t
    shards = sorted(p.name for p in hf_dir.glob("*.safetensors"))
    t_hf, eng = start(hf_dir)
    eng.save_snapshot(snap_dir)
    eng.close()
    del eng
    torch.cuda.empty_cache()
    times = {"safetensors": [t_hf], "snapshot": []}
    for _ in range(2):
        for kind, d in (("snapshot", snap_dir), ("safetensors", hf_dir)):
            if kind == "safetensors" and len(times[kind]) >= 2:
                continue
            s, eng = start(d)
            times[kind].append(s)
            eng.close()
            del eng
            torch.cuda.empty_cache()
    gb = sum(p.stat().st_size for p in hf_dir.glob("*.safetensors")) / 1e9
    rec = {"preset": a.preset, "checkpoint_GB": round(gb, 2), "shards": len(shards), "write_s": round(write_s, 1),
           "safetensors_start_s": [round(x, 2) for x in times["safetensors"]],
           "snapshot_start_s": [round(x, 2) for x in times["snapshot"]],
           "speedup_best": round(min(times["safetensors"]) / min(times["snapshot"]), 2)}
    print(json.dumps(rec))
    if a.json:
        append_jsonl(a.json, [rec])


if __name__ == "__main__":
    main()
