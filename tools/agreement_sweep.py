"""Calibration: how decisive must a random model be for bf16 top-1 agreement to measure kernels, not ties?
Prints, per family config and init std, transformers' own bf16-vs-fp32 agreement and ours-vs-transformers.
    python3 tools/agreement_sweep.py [family,family...]      (on a GPU; see tests/gpu/test_agreement_gpu.py)"""
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "gpu"))   # the agreement test's helpers

import torch

import test_agreement_gpu as T  # noqa: E402
from agreement import agreement, sharpen_router
from fastgen_core.testing import save_tiny_model

names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(T._configs())
for name in names:
    for std in (0.02, 0.05, 0.1, 0.2):
        for layers in (1, 2):
            cfg = T._configs()[name]()
            cfg.num_hidden_layers = layers
            if getattr(cfg, "layer_types", None):
                cfg.layer_types = cfg.layer_types[:layers]
            d = tempfile.mkdtemp()
            m = save_tiny_model(cfg, d, init_std=std)
            if name == "mixtral":
                sharpen_router(m, d)
            r = agreement(d, cfg, "cuda", torch.bfloat16, num_seqs=8)
            print(f"SWEEP {name:<16} std {std:<5} L{layers} ours_vs_hf {r['ours_vs_hf']:.4f} hf_vs_fp32 "
                  f"{r['hf_vs_hf_fp32']:.4f} ours_vs_fp32 {r['ours_vs_hf_fp32']:.4f}", flush=True)
