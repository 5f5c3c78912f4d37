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
    path = Path(model_dir) / TENSORS
    if not path.is_file():
        raise WeightLoadError(f"{model_dir} is a fastgen snapshot but {TENSORS} is missing")
    targets = model.state_dict(keep_vars=True)
    aliases = meta["aliases"]
    header, data_start = _header(path)
    for name in header:
        if name not in targets:
            raise WeightLoadError(f"snapshot tensor {name!r} is not a parameter of this "
                                  f"{meta['family']!r} model (config.json and snapshot disagree?)")
    if not _stream(path, header, data_start, targets):
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as sf:
            for name in sf.keys():
                copy_checked(targets[name], sf.get_tensor(name), f"snapshot tensor {name!r}", "the model")
    filled = set(header)
    missing = [n for n in targets if n not in filled and n not in aliases]
    if missing:
        raise WeightLoadError(f"snapshot {path} is missing {missing[:5]} ({len(missing)} tensor(s) in all)")


_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}
CHUNK = 256 << 20          # bytes per read in the streamed load
READERS = 4                # threads reading one chunk (page-cache reads run faster in parallel)


def _header(path: Path) -> tuple[dict, int]:
    """The safetensors header, name -> {dtype, shape, data_offsets}, and the file offset those offsets
    start from (the end of the header)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(n))
        except json.JSONDecodeError as e:
            raise WeightLoadError(f"{path} is not a safetensors file: {e}") from None
    header.pop("__metadata__", None)
    return header, 8 + n


def _stream(path: Path, header: dict, start: int, targets: dict, chunk: int = CHUNK, on_cpu: bool = False) -> bool:
    """Copy the snapshot straight into CUDA parameters: large parallel reads into two pinned buffers, each
    copied to the GPU asynchronously while the next is read (no per-tensor host copies, no conversions).
    False (nothing copied) where that does not apply: a CPU model, a tensor-parallel slice, another dtype or
    shape -- the caller then copies tensor by tensor, with its checks and error messages. (``on_cpu``: run
    the same chunking into CPU parameters, synchronously: how the CPU tests check it.)"""
    import os
    from concurrent.futures import ThreadPoolExecutor
    items = sorted(((info["data_offsets"][0], info["data_offsets"][1], name) for name, info in header.items()))
    for _, _, name in items:
        t, info = targets[name], header[name]
        if (not (t.is_cuda or on_cpu) or not t.is_contiguous() or hasattr(t, "tp_ranges") or _DTYPES.get(info["dtype"]) != t.dtype
                or tuple(info["shape"]) != tuple(t.shape)):
            return False
    if not items:
        return True
    device = targets[items[0][2]].device
    cuda = device.type == "cuda"
    end = max(e for _, e, _ in items)
    bufs = [torch.empty(min(chunk, end), dtype=torch.uint8) for _ in range(2)]
    if cuda:
        bufs = [b.pin_memory() for b in bufs]
    done = [None, None]
    fd = os.open(path, os.O_RDONLY)
    try:
        with ThreadPoolExecutor(READERS) as pool:
            k = 0
            for c0 in range(0, end, chunk):
                c1 = min(c0 + chunk, end)
                buf = bufs[k % 2]
                if done[k % 2] is not None:
                    done[k % 2].synchronize()         # the GPU has copied what this buffer held before
                view = memoryview(buf.numpy())
                part = -(-(c1 - c0) // READERS)
                list(pool.map(lambda o: _pread_all(fd, view[o:min(o + part, c1 - c0)], start + c0 + o),
                              range(0, c1 - c0, part)))
                for b, e, name in items:
                    lo, hi = max(b, c0), min(e, c1)
                    if lo < hi:
                        dst = targets[name].detach().view(-1).view(torch.uint8)
                        dst[lo - b:hi - b].copy_(buf[lo - c0:hi - c0], non_blocking=cuda)
                if cuda:
                    done[k % 2] = torch.cuda.Event()
                    done[k % 2].record(torch.cuda.current_stream(device))
                k += 1
        if cuda:
            torch.cuda.current_stream(device).synchronize()
    finally:
        os.close(fd)
    return True


def _pread_all(fd: int, view: memoryview, offset: int) -> None:
    import os
    while len(view):
        n = os.preadv(fd, [view], offset)
        if n <= 0:
            raise WeightLoadError(f"the snapshot file ended early (at byte {offset})")
        view, offset = view[n:], offset + n
