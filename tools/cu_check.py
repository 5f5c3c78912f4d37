"""Compile-check CUDA sources with nvcc; no GPU needed (NVRTC compiles them at run time with the same headers).

Usage: python tools/cu_check.py [FILE.cu ...]   (no files: every *.cu file git tracks)

nvcc is $NVCC when set, else the one on PATH, else CUDA 13's compiler from the package index: the wheels
in NVCC_WHEELS (nvcc, its front end cicc, and the headers cuda_bf16.h needs), installed once with pip into
$FASTGEN_CACHE/nvcc-<version> (default ~/.cache/fastgen). Exits 1 naming every file that does not compile.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# one CUDA release, every piece pinned: nvcc's own requirements are unpinned and a newer cicc or header set
# would mix releases
NVCC_VERSION = "13.0.88"
NVCC_WHEELS = (f"nvidia-cuda-nvcc=={NVCC_VERSION}", f"nvidia-nvvm=={NVCC_VERSION}",
               f"nvidia-cuda-crt=={NVCC_VERSION}", "nvidia-cuda-runtime==13.0.96", "nvidia-cuda-cccl==13.0.85")
# the core's headers, as fastgen_core.kernels.load puts them on NVRTC's include path
NVCC_FLAGS = ("-std=c++17", "-arch=sm_90a", f"-I{Path(__file__).resolve().parents[1] / 'kernels'}", "--ptx", "-o",
              os.devnull)


def wheel_home() -> Path:
    cache = Path(os.environ.get("FASTGEN_CACHE", Path.home() / ".cache" / "fastgen"))
    return cache / f"nvcc-{NVCC_VERSION}"


def find_nvcc() -> str:
    """$NVCC, nvcc on PATH, or the wheel's nvcc (installed on first use)."""
    if os.environ.get("NVCC"):
        return os.environ["NVCC"]
    on_path = shutil.which("nvcc")
    if on_path:
        return on_path
    home = wheel_home()
    nvcc = home / "nvidia" / "cu13" / "bin" / "nvcc"
    if not nvcc.is_file():
        print(f"cu-check: no nvcc on PATH; installing CUDA {NVCC_VERSION}'s compiler from the package index "
              f"into {home} (once)", flush=True)
        partial = home.with_name(home.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target",
               str(partial), *NVCC_WHEELS]
        if subprocess.run(cmd).returncode != 0:
            sys.exit(f"cu-check: could not install {' '.join(NVCC_WHEELS)}; put a CUDA toolkit's nvcc on PATH "
                     "or set NVCC=/path/to/nvcc")
        shutil.rmtree(home, ignore_errors=True)
        partial.rename(home)        # whole or absent: an interrupted install is redone next time
    return str(nvcc)


def tracked_cu_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "*.cu"], capture_output=True, text=True, check=True)
    return out.stdout.split()


def main(argv: list[str]) -> int:
    files = argv or tracked_cu_files()
    if not files:
        print("cu-check: no .cu files")
        return 0
    if not (shutil.which("c++") or shutil.which("g++")):
        sys.exit("cu-check: nvcc needs a host C++ compiler and none is on PATH (apt-get install g++)")
    nvcc = find_nvcc()
    failed = []
    for f in files:
        print(f"{nvcc} {f}", flush=True)
        if subprocess.run([nvcc, *NVCC_FLAGS, f]).returncode != 0:
            failed.append(f)
    if failed:
        print(f"cu-check: {len(failed)} of {len(files)} CUDA file(s) do not compile: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    print(f"cu-check: {len(files)} CUDA file(s) compile")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
