"""`make cu-check` (run by `make test`): every tracked .cu file compiles with nvcc, which comes from the package
index when no CUDA toolkit is on PATH, and with NVRTC (the run-time compiler CuPy uses, from its wheel); a
kernel that does not compile with either fails the check."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BROKEN = """#include <cuda_bf16.h>
extern "C" __global__ void broken(__nv_bfloat16* x) { x[threadIdx.x] = not_declared_anywhere; }
"""


def env_without_nvcc() -> dict:
    """The environment with every PATH directory holding an nvcc left out (and no NVCC override)."""
    env = {k: v for k, v in os.environ.items() if k != "NVCC"}
    dirs = [d for d in env.get("PATH", "").split(os.pathsep) if d and not os.access(os.path.join(d, "nvcc"), os.X_OK)]
    env["PATH"] = os.pathsep.join(dirs)
    return env


def cu_check(*files, env):
    return subprocess.run(["make", "-s", "cu-check", f"PYTHON={sys.executable}",
                           *([f"CU_FILES={' '.join(map(str, files))}"] if files else [])],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_every_tracked_kernel_compiles_with_nvcc_from_the_package_index():
    env = env_without_nvcc()
    assert shutil.which("nvcc", path=env["PATH"]) is None
    r = cu_check(env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    tracked = subprocess.run(["git", "ls-files", "*.cu"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert tracked
    for f in tracked:         # each compiled by the wheel's nvcc
        assert f"/nvidia/cu13/bin/nvcc {f}" in r.stdout, r.stdout
    assert f"{len(tracked)} CUDA file(s) compile" in r.stdout


@pytest.mark.parametrize("source", ["package index", "PATH"])
def test_a_kernel_that_does_not_compile_fails_the_check(tmp_path, source):
    env = env_without_nvcc() if source == "package index" else dict(os.environ)
    if source == "PATH" and shutil.which("nvcc") is None:
        pytest.skip("no CUDA toolkit's nvcc on PATH here")
    bad = tmp_path / "broken.cu"
    bad.write_text(BROKEN)
    good = ROOT / "kernels" / "fused_ops.cu"
    r = cu_check(good, bad, env=env)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "not_declared_anywhere" in out and "is undefined" in out, out         # nvcc's own error
    assert f"1 of 2 CUDA file(s) do not compile: {bad}" in out, out


def test_the_cuda_extra_matches_the_cuda_release():
    """`pip install -e '.[cuda]'` brings the CuPy built for the CUDA major the kernels are checked against (and, on
    a CUDA build of torch, the one torch runs on)."""
    import tomllib

    import torch
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from cu_check import NVCC_VERSION
    finally:
        sys.path.pop(0)
    major = NVCC_VERSION.split(".")[0]
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["cuda"]
    assert extra == [f"cupy-cuda{major}x"]
    if torch.version.cuda is not None:
        assert torch.version.cuda.split(".")[0] == major, torch.version.cuda


def test_a_kernel_only_nvcc_accepts_fails_the_check(tmp_path):
    """CuPy compiles the kernels with NVRTC, which has no host headers: INFINITY (math.h) compiles with nvcc
    and not there: a kernel using it passes nvcc and fails on the GPU."""
    src = tmp_path / "host_header.cu"
    src.write_text('extern "C" __global__ void k(float* x) { x[threadIdx.x] = -INFINITY; }\n')
    r = cu_check(src, env=env_without_nvcc())
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert f"nvrtc {src}" in out and '"INFINITY" is undefined' in out, out
    assert f"1 of 1 CUDA file(s) do not compile: {src}" in out, out
