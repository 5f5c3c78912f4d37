"""Install torch into this interpreter when it has none (``make install`` runs it); a torch already there is kept.

Which build, when none is installed:
- ``TORCH_INDEX_URL`` set: that index is added (``--extra-index-url``); empty: the package index's default.
- otherwise, a machine with an NVIDIA GPU (``nvidia-smi`` on PATH or a loaded driver) gets the package
  index's default build (CUDA on Linux); a machine without one gets PyTorch's CPU build from
  ``https://download.pytorch.org/whl/cpu``, where the plain package index would give the multi-GB CUDA build
  and its NVIDIA libraries.
The index is added rather than substituted, so torch's own requirements (and any wheel the local pip
configuration offers) still come from the usual places; a CPU build ``X+cpu`` ranks above ``X`` for the pin.

Usage: python tools/install_torch.py [PIN] [--dry-run]     (PIN: default torch==2.13.0)
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

DEFAULT_PIN = "torch==2.13.0"
CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"


def has_nvidia_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia/version").is_file()


def install_command(pin: str) -> tuple[list[str] | None, str]:
    """(pip command or None, what it does, for people)."""
    if importlib.util.find_spec("torch") is not None:
        return None, f"torch {importlib.metadata.version('torch')} is installed: kept"
    cmd = [sys.executable, "-m", "pip", "install", "-q", pin]
    if "TORCH_INDEX_URL" in os.environ:
        index = os.environ["TORCH_INDEX_URL"]
        why = f"TORCH_INDEX_URL={index!r}"
    elif has_nvidia_gpu():
        index, why = "", "an NVIDIA GPU is present"
    else:
        index, why = CPU_INDEX_URL, "no NVIDIA GPU here (no nvidia-smi)"
    if index:
        cmd += ["--extra-index-url", index]
    if index == CPU_INDEX_URL:
        what = f"{pin}, PyTorch's CPU build, from {index}"
    elif index:
        what = f"{pin} from {index} (and the package index)"
    else:
        what = f"{pin} from the package index (its default build: CUDA on Linux)"
    return cmd, (f"installing {what}: {why}. To choose another build set TORCH_INDEX_URL (e.g. {CPU_INDEX_URL}, "
                 "https://download.pytorch.org/whl/cu130 for CUDA 13, or empty for the package index's default)")


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
