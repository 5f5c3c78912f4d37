"""Model ids of the Hugging Face Hub (``org/name``) as models: resolved to a local directory through huggingface_hub.

A path that exists is a local model directory and is used as it is. Anything else shaped like a Hub id is looked
up in huggingface_hub's cache first (``$HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``): a cached snapshot
with a config and weights is used without touching the network, so it works offline (``HF_HUB_OFFLINE=1``).
Otherwise the model is downloaded (config, tokenizer and safetensors weights; ``.bin`` weights only when the
repository has no safetensors). Failures are ConfigErrors naming the id and what to do.
"""
from __future__ import annotations

import re
from pathlib import Path

from .errors import ConfigError

# what the engine reads from a model repository: top-level files only (no original/, onnx/, ... copies)
FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
BIN_FILES = ["*.json", "*.bin", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
IGNORE = ["*/*", "consolidated*", "training_args.bin"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(model: str) -> bool:
    """``org/name`` (or ``name``) that is not an existing path."""
    return not Path(model).expanduser().exists() and bool(HUB_ID.match(model) or re.match(r"^[\w.-]+$", model))


def resolve_model(model: str) -> str:
    """A local model directory for ``model``: the path itself, or a Hub id's snapshot in the cache."""
    model = str(model)
    if not is_hub_id(model):
        return model
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    cached = _cached_snapshot(model)
    if cached is not None:
        return cached
    what = f"{model!r} is neither a local directory nor a model in the Hugging Face cache"
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(f"{what} (looked in {constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE is set: "
                          f"download it where there is network (hf download {model}) or give a model directory")
    try:
        path = snapshot_download(model, allow_patterns=FILES, ignore_patterns=IGNORE)
        if not _has_weights(Path(path)):
            path = snapshot_download(model, allow_patterns=BIN_FILES, ignore_patterns=IGNORE)
    except RepositoryNotFoundError:
        raise ConfigError(f"{what}, and the Hub has no model {model!r} (or it is private: log in with "
                          "`hf auth login` or set HF_TOKEN)") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise ConfigError(f"{what}, and downloading it failed: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if not ((Path(path) / "config.json").is_file() and _has_weights(Path(path))):
        # snapshot_download answers with an incomplete cached snapshot when the Hub cannot be reached
        raise ConfigError(f"{model!r}: its snapshot {path} lacks config.json or weights (*.safetensors, *.bin), and "
                          "the Hub did not provide them (is it reachable? does the repository have weights?)")
    return path


def _cached_snapshot(model: str) -> str | None:
    """The cached snapshot of ``model`` when it holds a config and weights (no network)."""
    from huggingface_hub import snapshot_download
    try:
        path = snapshot_download(model, allow_patterns=FILES, ignore_patterns=IGNORE, local_files_only=True)
    except (OSError, ValueError):        # not cached, or cached incompletely (IncompleteSnapshotError)
        return None
    return path if (Path(path) / "config.json").is_file() and _has_weights(Path(path)) else None


def _has_weights(path: Path) -> bool:
    return any(path.glob("*.safetensors")) or any(p.name != "training_args.bin" for p in path.glob("*.bin"))
