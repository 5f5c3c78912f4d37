"""Install torch into this interpreter when it has none (``make install`` runs it); a torch already there is kept.

Which build, when none is installed (the choice and its reason are printed):
- ``TORCH_INDEX_URL`` set: that index is added (``--extra-index-url``); empty: the package index's default.
- a machine with an NVIDIA GPU (``nvidia-smi`` on PATH or a loaded driver): the package index's default build
  (CUDA on Linux).
- a machine without one: a CPU build. pip is asked first (a dry run) what the pin resolves to as it is
  configured here; if that is already a CPU build (it requires no NVIDIA libraries, e.g. a ``+cpu`` wheel a
  local wheel directory offers, or macOS's) it is installed as is, otherwise PyTorch's CPU index
  https://download.pytorch.org/whl/cpu is added, where the plain package index would give Linux's multi-GB
  CUDA build and its NVIDIA libraries. The index is added rather than substituted, so torch's own requirements
  still come from the usual places; for the pin, ``X+cpu`` ranks above ``X``.

Usage: python tools/install_torch.py [PIN] [--dry-run]     (PIN: default torch==2.13.0; --dry-run prints the
pip command instead of running it)
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

DEFAULT_PIN = "torch==2.13.0"
CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"
CHOOSE = (f"To choose another build set TORCH_INDEX_URL (e.g. {CPU_INDEX_URL}, https://download.pytorch.org/whl/cu130 "
          "for CUDA 13, or empty for the package index's default)")


def has_nvidia_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia/version").is_file()


def configured_build(pin: str) -> tuple[str, bool] | None:
    """(version, whether it requires NVIDIA's CUDA libraries) of what pip, as configured here, would install for
    ``pin`` (a dry run, metadata only); None when pip cannot tell."""
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
                        "--quiet", "--disable-pip-version-check", "--report", "-", pin],
                       capture_output=True, text=True)
    try:
        meta = json.loads(r.stdout)["install"][0]["metadata"]
    except (ValueError, KeyError, IndexError):
        return None
    requires = meta.get("requires_dist") or []
    return meta["version"], any(req.lower().startswith("nvidia-") for req in requires)


def install_command(pin: str) -> tuple[list[str] | None, str]:
    """(pip command or None, what it does and why, for people)."""
    if importlib.util.find_spec("torch") is not None:
        return None, f"torch {importlib.metadata.version('torch')} is installed: kept"
    cmd = [sys.executable, "-m", "pip", "install", "-q", pin]
    if "TORCH_INDEX_URL" in os.environ:
        index = os.environ["TORCH_INDEX_URL"]
        where = f"from {index} (and the package index)" if index else "from the package index (its default build)"
        return cmd + (["--extra-index-url", index] if index else []), \
            f"installing {pin} {where}: TORCH_INDEX_URL={index!r}"
    if has_nvidia_gpu():
        return cmd, (f"installing {pin} from the package index (its default build: CUDA on Linux): an NVIDIA GPU is "
                     f"present. {CHOOSE}")
    found = configured_build(pin)
    if found is not None and not found[1]:
        return cmd, (f"installing {pin} as pip is configured here: no NVIDIA GPU (no nvidia-smi), and it resolves to "
                     f"torch {found[0]}, a CPU build (no NVIDIA libraries). {CHOOSE}")
    why = f"the package index's torch {found[0]} is a CUDA build" if found else "pip could not tell which build " \
                                                                                 "the package index has"
    return cmd + ["--extra-index-url", CPU_INDEX_URL], (
        f"installing {pin}, PyTorch's CPU build, from {CPU_INDEX_URL}: no NVIDIA GPU (no nvidia-smi), and {why}. "
        f"{CHOOSE}")


def main(argv: list[str]) -> int:
    dry = "--dry-run" in argv
    pins = [a for a in argv if a != "--dry-run"]
    cmd, message = install_command(pins[0] if pins else DEFAULT_PIN)
    print(f"install-torch: {message}", flush=True)
    if cmd is None:
        return 0
    if dry:
        print(" ".join(cmd))
        return 0
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
