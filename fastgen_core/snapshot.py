"""Engine snapshots: a loaded model saved in the engine's own layout, for fast, mapping-free reloads.

A snapshot is a model directory: the source's config.json, tokenizer and generation files, plus
``fastgen_snapshot.json`` (format, family, dtype, tied names) and ``fastgen_model.safetensors`` holding the
engine's parameters under their engine names (fused QKV, stacked experts...). Loading one skips the
family's weight map, shard fusing and any conversion (the embedded GGUF model's dequantisation included):
each tensor is copied into the parameter of the same name, and a missing, unexpected or mis-shaped tensor
is an error naming it.

    pipe.engine.save_snapshot("llama-snap")      # or: fastgen snapshot --model DIR OUT
    fg.pipeline("llama-snap")                      # load_format "auto" finds the snapshot
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError, WeightLoadError
from .loader import copy_checked

META = "fastgen_snapshot.json"
TENSORS = "fastgen_model.safetensors"
FORMAT, VERSION = "fastgen-snapshot", 1
# copied from the source directory when present: what the tokenizer, chat template and EOS handling read
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "merges.txt",
              "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json",
              "generation_config.json")


def read_meta(model_dir: Path) -> dict | None:
    """The snapshot's metadata, or None when ``model_dir`` is not a snapshot."""
    path = Path(model_dir) / META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ConfigError(f"{path}: format {meta.get('format')!r} version {meta.get('version')!r} is not one this "
                          f"fastgen reads (it reads {FORMAT!r} version {VERSION})")
    for key in ("family", "dtype", "aliases"):
        if key not in meta:
            raise ConfigError(f"{path} lacks {key!r}")
    return meta


def save(model: nn.Module, hf_config: dict, family: str, dist: str, dtype: torch.dtype, source_dir: Path,
         out_dir: str | Path) -> Path:
    from safetensors.torch import save_file

    from . import __version__
    out = Path(out_dir)
    if out.resolve() == Path(source_dir).resolve():
        raise ConfigError(f"the snapshot directory {str(out)!r} is the model directory itself; choose another")
    out.mkdir(parents=True, exist_ok=True)
    tensors, aliases, seen = {}, {}, {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.shape, t.stride())
        if key in seen:                    # tied weights (lm_head = embed_tokens): stored once
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    (out / "config.json").write_text(json.dumps(hf_config, indent=2))
    save_file(tensors, str(out / TENSORS))
    shutil.copymode(out / "config.json", out / TENSORS)     # safetensors writes 0600; the umask's mode as the rest
    for f in SIDE_FILES:
        if (Path(source_dir) / f).is_file():
            shutil.copyfile(Path(source_dir) / f, out / f)
    meta = {"format": FORMAT, "version": VERSION, "family": family, "distribution": dist,
            "dtype": str(dtype).removeprefix("torch."), "aliases": aliases, "fastgen_core": __version__,
            "source": str(source_dir)}
    (out / META).write_text(json.dumps(meta, indent=2))
    return out


@torch.no_grad()
def load(model: nn.Module, model_dir: Path, meta: dict) -> None:
    from safetensors import safe_open
    path = Path(model_dir) / TENSORS
    if not path.is_file():
        raise WeightLoadError(f"{model_dir} is a fastgen snapshot but {TENSORS} is missing")
    targets = model.state_dict(keep_vars=True)
    aliases = meta["aliases"]
    filled = set()
    with safe_open(str(path), framework="pt") as sf:
        for name in sf.keys():
            if name not in targets:
                raise WeightLoadError(f"snapshot tensor {name!r} is not a parameter of this "
                                      f"{meta['family']!r} model (config.json and snapshot disagree?)")
            copy_checked(targets[name], sf.get_tensor(name), f"snapshot tensor {name!r}", "the model")
            filled.add(name)
    missing = [n for n in targets if n not in filled and n not in aliases]
    if missing:
        raise WeightLoadError(f"snapshot {path} is missing {missing[:5]} ({len(missing)} tensor(s) in all)")
