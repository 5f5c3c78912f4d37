"""Compile-check CUDA sources with nvcc and with NVRTC; no GPU needed.

Usage: python tools/cu_check.py [FILE.cu ...]   (no files: every *.cu file git tracks)

nvcc is $NVCC when set, else the one on PATH, else CUDA 13's compiler from the package index: the wheels
in NVCC_WHEELS (nvcc, its front end cicc, and the headers cuda_bf16.h needs), installed once with pip into
$FASTGEN_CACHE/nvcc-<version> (default ~/.cache/fastgen).

NVRTC is the compiler that runs the kernels: CuPy hands it each source at run time, with the options
``fastgen_core.kernels.load`` gives. It accepts less than nvcc (no host headers: no math.h, so no INFINITY),
so every file is also compiled by NVRTC from the pinned ``nvidia-cuda-nvrtc`` wheel (installed into the same
folder), through its C API; that needs no GPU either. Exits 1 naming every file that does not compile.
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
NVRTC_WHEEL = f"nvidia-cuda-nvrtc=={NVCC_VERSION}"
KERNEL_INCLUDE = Path(__file__).resolve().parents[1] / "kernels"
COMPILE_OPTIONS = ("-std=c++17", "-arch=sm_90a", f"-I{KERNEL_INCLUDE}")     # both compilers
NVCC_FLAGS = (*COMPILE_OPTIONS, "--ptx", "-o", os.devnull)


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
    return str(installed_wheels() / "nvidia" / "cu13" / "bin" / "nvcc")


def installed_wheels() -> Path:
    """The wheel folder with nvcc, NVRTC and CUDA's headers, installed on first use."""
    home = wheel_home()
    lib = home / "nvidia" / "cu13"
    if not ((lib / "bin" / "nvcc").is_file() and (lib / "lib" / "libnvrtc.so.13").is_file()):
        print(f"cu-check: installing CUDA {NVCC_VERSION}'s nvcc and NVRTC from the package index into {home} "
              "(once)", flush=True)
        partial = home.with_name(home.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target",
               str(partial), *NVCC_WHEELS, NVRTC_WHEEL]
        if subprocess.run(cmd).returncode != 0:
            sys.exit(f"cu-check: could not install {' '.join((*NVCC_WHEELS, NVRTC_WHEEL))}; put a CUDA toolkit's "
                     "nvcc on PATH or set NVCC=/path/to/nvcc")
        shutil.rmtree(home, ignore_errors=True)
        partial.rename(home)        # whole or absent: an interrupted install is redone next time
    return home


def nvrtc_compile(path: str, home: Path) -> str | None:
    """Compile ``path`` with NVRTC as CuPy does at run time (fastgen_core.kernels.load's options; CuPy adds
    CUDA's include folder): None when it compiles, else NVRTC's log."""
    import ctypes
    lib_dir = home / "nvidia" / "cu13" / "lib"
    ctypes.CDLL(str(lib_dir / "libnvrtc-builtins.so.13.0"), mode=ctypes.RTLD_GLOBAL)  # NVRTC dlopens it by name
    nvrtc = ctypes.CDLL(str(lib_dir / "libnvrtc.so.13"))
    opts = [o.encode() for o in (*COMPILE_OPTIONS, f"-I{home / 'nvidia' / 'cu13' / 'include'}")]
    prog = ctypes.c_void_p()
    if nvrtc.nvrtcCreateProgram(ctypes.byref(prog), Path(path).read_bytes(), str(path).encode(), 0, None, None):
        return "nvrtcCreateProgram failed"
    try:
        status = nvrtc.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        return None if status == 0 else log.value.decode(errors="replace")
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))


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
    home = installed_wheels()
    failed = []
    for f in files:
        print(f"{nvcc} {f}", flush=True)
        ok = subprocess.run([nvcc, *NVCC_FLAGS, f]).returncode == 0
        print(f"nvrtc {f}", flush=True)
        log = nvrtc_compile(f, home)
        if log is not None:
            print(log, file=sys.stderr, flush=True)
        if not ok or log is not None:
            failed.append(f)
    if failed:
        print(f"cu-check: {len(failed)} of {len(files)} CUDA file(s) do not compile: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    print(f"cu-check: {len(files)} CUDA file(s) compile")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
