"""Load an HF model directory: config.json, safetensors (single or sharded), .bin fallback, dummy weights."""
from __future__ import annotations

import contextlib
import difflib
import json
import re
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from .config import LOAD_FORMATS  # noqa: F401  (re-exported: the formats checkpoint_files accepts)
from .errors import ConfigError, WeightLoadError
from .layers.sharded import full_shape, take_slice
from .weights import WeightMap



def read_hf_config(model_dir: str | Path) -> dict:
    path = Path(model_dir)
    if not path.is_dir():
        raise ConfigError(f"model directory {str(model_dir)!r} does not exist (give a Hugging Face model directory "
                          "or a Hub id such as HuggingFaceTB/SmolLM2-135M-Instruct)")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ConfigError(f"{path} has no config.json; a Hugging Face model directory is expected")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cfg} is not valid JSON: {e}") from None


def checkpoint_files(model_dir: Path, load_format: str = "auto") -> tuple[str, list[Path]]:
    """("safetensors" | "pt", files), preferring safetensors and honouring index files."""
    if load_format not in LOAD_FORMATS:
        raise ConfigError(f"load_format must be one of {LOAD_FORMATS}, got {load_format!r}")
    if load_format in ("safetensors", "pt") and (model_dir / "fastgen_snapshot.json").is_file():
        raise ConfigError(f"{model_dir} is a fastgen snapshot (it has fastgen_snapshot.json), whose tensors are in the "
                          f"engine's layout, not a checkpoint's: load it with load_format 'snapshot' or 'auto' "
                          f"(--load-format snapshot), not {load_format!r}")
    for kind, single, index, glob in (("safetensors", "model.safetensors", "model.safetensors.index.json", "*.safetensors"),
                                      ("pt", "pytorch_model.bin", "pytorch_model.bin.index.json", "*.bin")):
        if load_format not in ("auto", kind):
            continue
        if (model_dir / index).is_file():
            try:
                weight_map = json.loads((model_dir / index).read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise WeightLoadError(f"{model_dir / index} is not a valid index file ({e})") from None
            files = sorted({model_dir / f for f in weight_map.values()})
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise WeightLoadError(f"{index} lists shard files that are missing: {missing}")
            return kind, files
        if (model_dir / single).is_file():
            return kind, [model_dir / single]
        files = sorted(model_dir.glob(glob))
        if kind == "pt":
            files = [f for f in files if f.name != "training_args.bin"]
        if files:
            return kind, files
    raise WeightLoadError(f"no weights found in {model_dir} (looked for *.safetensors and pytorch_model*.bin"
                          f" with load_format={load_format!r}); use load_format='dummy' for random weights")


def iter_tensors(kind: str, files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    from tqdm.auto import tqdm
    bar = tqdm(files, desc="loading weights", unit="file", disable=len(files) < 2 or None)
    for f in bar:
        if kind == "safetensors":
            from safetensors import safe_open
            with safe_open(str(f), framework="pt") as sf:
                for name in sf.keys():
                    yield name, sf.get_tensor(name)
        else:
            try:
                state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:
                raise WeightLoadError(f"cannot read {f.name}: {e}") from None
            yield from state.items()
            del state


@torch.no_grad()
def load_weights(model: nn.Module, weight_map: WeightMap, tensors: Iterator[tuple[str, torch.Tensor]]) -> None:
    """Copy checkpoint tensors into ``model`` through ``weight_map``; every tensor must be used and every
    parameter filled, with the right shape, or a WeightLoadError names the offender."""
    params = dict(model.named_parameters())
    params.update({n: b for n, b in model.named_buffers() if n in _persistent_buffers(model)})
    filled: set[str] = set()
    pending: dict[str, dict[int, torch.Tensor]] = {}
    for name, tensor in tensors:
        hit = weight_map.match(name)
        if hit is None:
            if weight_map.ignored(name):
                continue
            raise WeightLoadError(f"unexpected tensor {name!r} {tuple(tensor.shape)} in the checkpoint: no rule of "
                                  f"{_whose(weight_map)} weight map uses it (add a Rule for it, or an ignore "
                                  "pattern if the engine does not need it)")
        rule, target = hit
        if target not in params:
            raise WeightLoadError(_no_such_target(weight_map, rule, name, target, params))
        if rule.num_shards > 1:
            parts = pending.setdefault(target, {})
            parts[rule.shard] = tensor
            if len(parts) < rule.num_shards:
                continue
            tensor = torch.cat([parts[k] for k in range(rule.num_shards)], dim=rule.dim)
            del pending[target]
        if rule.transform is not None:
            tensor = rule.transform(tensor)
        copy_checked(params[target], tensor, f"tensor {name!r}", repr(target))
        filled.add(target)
    if pending:
        t, parts = next(iter(pending.items()))
        raise WeightLoadError(f"parameter {t!r} is fused from {weight_map.sources_for(t)} but the checkpoint "
                              f"only had shards {sorted(parts)}")
    missing = [n for n in params if n not in filled]
    if missing:
        n = missing[0]
        raise WeightLoadError(f"checkpoint is missing {weight_map.sources_for(n) or [n]} (for parameter {n!r}); "
                              f"{len(missing)} parameter(s) unfilled in all")


def _whose(weight_map: WeightMap) -> str:
    return f"the {weight_map.family!r} family's" if weight_map.family else "this family's"


def _no_such_target(weight_map: WeightMap, rule, name: str, target: str, params: dict) -> str:
    """Why a rule's target is not a parameter: a typo in the rule (nearest names), or a checkpoint with
    more layers or experts than config.json builds (the same name exists at other indices)."""
    head = (f"{_whose(weight_map)} weight map rule {rule.source!r} -> {rule.target!r} sends checkpoint tensor "
            f"{name!r} to {target!r}, but the model has no parameter of that name")
    shape = re.sub(r"\.\d+(?=\.)", ".N", target)
    indexed = [p for p in params if re.sub(r"\.\d+(?=\.)", ".N", p) == shape]
    if indexed:
        some = repr(indexed[0]) if len(indexed) == 1 else f"{indexed[0]!r} ... {indexed[-1]!r}"
        return (f"{head}; it has {len(indexed)} like it ({some}): the checkpoint has more layers or experts than "
                "config.json describes (num_hidden_layers / num_local_experts)")
    near = difflib.get_close_matches(target, list(params), n=3, cutoff=0.6)
    return (f"{head}; nearest parameter names: {near or 'none'} (the rule's target must be a name from "
            "model.named_parameters())")


def copy_checked(param: torch.Tensor, tensor: torch.Tensor, what: str, target: str) -> None:
    """param <- tensor (cast to param's dtype), or a WeightLoadError naming both when the shapes differ.
    ``tensor`` is the whole checkpoint tensor; a tensor-parallel slice takes its own part of it."""
    want = full_shape(param)
    if tuple(tensor.shape) != want:
        raise WeightLoadError(f"{what} has shape {tuple(tensor.shape)} but {target} expects {want}")
    param.copy_(take_slice(param, tensor))


def _persistent_buffers(model: nn.Module) -> set[str]:
    return set(model.state_dict().keys()) - {n for n, _ in model.named_parameters()}


@torch.no_grad()
def init_dummy_weights(model: nn.Module, seed: int = 0) -> None:
    """Random weights at real sizes (benchmarks): N(0, 0.02) matrices, unit norms, zero biases."""
    gens: dict[torch.device, torch.Generator] = {}
    for name, p in model.named_parameters():
        if p.dim() == 1:
            p.fill_(0.0 if name.endswith("bias") else 1.0)
        else:
            if p.device not in gens:
                gens[p.device] = torch.Generator(device=p.device).manual_seed(seed)
            if hasattr(p, "tp_ranges"):     # drawn whole, then sliced: the same model at every tensor-parallel size
                full = torch.empty(full_shape(p), dtype=p.dtype, device=p.device)
                p.copy_(take_slice(p, full.normal_(0.0, 0.02, generator=gens[p.device])))
            else:
                p.normal_(0.0, 0.02, generator=gens[p.device])


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                   "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
                   "sparse_")


@contextlib.contextmanager
def skip_parameter_init():
    """Build modules without drawing their initial weights (``torch.nn.init`` calls do nothing inside):
    every parameter is then overwritten by the checkpoint, the snapshot or the dummy weights (each loader
    checks that every parameter was filled), so the draw is dead work -- on a CPU, seconds for a 7B model."""
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS if hasattr(torch.nn.init, name)}
    try:
        for name in saved:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)
