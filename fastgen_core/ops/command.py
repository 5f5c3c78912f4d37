"""``fastgen plan``: the kernel plan of a model (which kernel each operation may run, in which order, and why the
others are left out), printed without loading weights or running anything."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def arguments(p: argparse.ArgumentParser) -> None:
    from ..config import KERNELS_HELP, EngineConfig
    from ..presets import preset_names
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="HF model directory or Hugging Face Hub id (org/name)")
    src.add_argument("--preset", choices=preset_names(), help="a benchmark preset's architecture")
    p.add_argument("--device", default=None, choices=["cuda", "cpu"], help="the device to plan for (default: cuda)")
    p.add_argument("--dtype", default=None,
                   help="float32, bfloat16, float16 (default: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--tensor-parallel-size", type=int, default=EngineConfig.tensor_parallel_size,
                   help="ranks the heads are split over")
    p.add_argument("--kernels", default=None, help=KERNELS_HELP)
    p.add_argument("--json", action="store_true", help="print {operation: [kernels tried in order]} as JSON")


def plan_for_model(model_dir: Path, device: str, dtype: str, setting, tp: int = 1):
    """The plan an engine would make for the model at ``model_dir`` (its config.json; no weights are read). On a
    machine without the device's libraries the plan assumes CuPy and Triton are installed, and says so."""
    import torch

    from .. import kernels
    from ..config import EngineConfig, torch_dtype_named
    from ..engine.build import read_source
    from ..registry import FamilyRegistry
    config = EngineConfig(str(model_dir), device="cpu", **({"kernels": setting} if setting is not None else {}))
    source = read_source(config, FamilyRegistry())
    mc, model_class = source.model_config, source.family.family.load_model_class()
    dtype_name = str(torch_dtype_named(dtype)).removeprefix("torch.")
    kv = max(1, mc.num_key_value_heads // tp)
    here = device == "cpu" or torch.cuda.is_available()
    have_cupy = kernels.available() if here else True
    have_triton = kernels.triton_available() if here else True
    family_on = model_class.family_kernels_on() if hasattr(model_class, "family_kernels_on") else ()
    return kernels.KernelPlan.build(config.kernels, device, dtype_name, have_cupy=have_cupy, have_triton=have_triton,
                                    model=kernels.ModelFacts(mc.num_attention_heads // tp, kv, mc.head_dim),
                                    extra_ops=getattr(model_class, "kernel_ops", None), family_on=family_on,
                                    assumed="" if here else "no GPU here: CuPy and Triton assumed installed")


def run(args) -> int:
    from ..config import DTYPES
    from ..errors import FastgenError
    device = args.device or "cuda"
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    if dtype not in DTYPES:
        print(f"error: --dtype must be one of {', '.join(sorted(DTYPES))}, got {dtype!r}", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="fastgen-plan-") as tmp:
            if args.preset:
                from ..bench.workload import write_preset
                model_dir, name = Path(write_preset(args.preset, tmp, None)), args.preset
            else:
                from ..hub import resolve_model
                model_dir, name = Path(resolve_model(args.model)), args.model
            plan = plan_for_model(model_dir, device, dtype, args.kernels, args.tensor_parallel_size)
    except (FastgenError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan.as_record(), indent=1))
    else:
        print(f"{name}: " + "\n".join(plan.describe()))
    return 0
