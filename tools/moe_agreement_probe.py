"""bf16 Mixtral agreement against router sharpness and seed (the test uses router x16 and seed 0).
usage: python3 tools/moe_agreement_probe.py [cuda|cpu]"""
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "gpu"))   # the agreement test's helpers

import torch

import test_agreement_gpu as T
from agreement import agreement, sharpen_router
from fastgen_core.testing import save_tiny_model

device = sys.argv[1] if len(sys.argv) > 1 else "cuda"
for scale in (1.0, 4.0, 16.0):
    for seed in (0, 1, 2):
        cfg = T._configs()["mixtral"]()
        d = tempfile.mkdtemp()
        torch.manual_seed(seed)
        m = save_tiny_model(cfg, d, init_std=0.02)
        sharpen_router(m, d, scale)
        r = agreement(d, cfg, device, torch.bfloat16, num_seqs=16, seed=seed)
        print(f"MOEPROBE router x{scale:<4} seed {seed} ours_vs_hf {r['ours_vs_hf']:.4f} hf_vs_fp32 "
              f"{r['hf_vs_hf_fp32']:.4f} ours_vs_fp32 {r['ours_vs_hf_fp32']:.4f} "
              f"max_logit_diff {r['max_abs_logit_diff']:.4f}", flush=True)
