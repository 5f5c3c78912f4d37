"""`make install`'s torch step (tools/install_torch.py): a torch already installed is kept; otherwise a machine
without an NVIDIA GPU gets PyTorch's CPU build, one with a GPU the package index's default, and
TORCH_INDEX_URL overrides either. Checked in a fresh virtualenv that has no torch."""
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "install_torch.py"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
DRIVER = Path("/proc/driver/nvidia/version")


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """An interpreter with no torch: a fresh virtualenv (no pip needed for a dry run)."""
    d = tmp_path_factory.mktemp("bare-venv")
    venv.create(d, with_pip=False)
    return str(d / "bin" / "python")


def run_tool(python, *args, path=None, **env_changes):
    env = {k: v for k, v in os.environ.items() if k != "TORCH_INDEX_URL"}
    env["PATH"] = path if path is not None else env.get("PATH", "")
    env.update(env_changes)
    r = subprocess.run([python, str(TOOL), *args, "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def path_without(program: str) -> str:
    return os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep)
                           if d and not os.access(os.path.join(d, program), os.X_OK))


@pytest.mark.skipif(DRIVER.exists(), reason="this machine has an NVIDIA driver")
def test_a_cpu_machine_gets_the_cpu_build_and_is_told_so(bare_python):
    out = run_tool(bare_python, "torch==2.13.0", path=path_without("nvidia-smi"))
    assert f"torch==2.13.0, PyTorch's CPU build, from {CPU_INDEX}" in out and "no NVIDIA GPU" in out and "TORCH_INDEX_URL" in out
    command = out.strip().splitlines()[-1].split()
    assert command[:4] == [bare_python, "-m", "pip", "install"]
    assert command[-3:] == ["torch==2.13.0", "--extra-index-url", CPU_INDEX]


@pytest.mark.skipif(DRIVER.exists(), reason="this machine has an NVIDIA driver")
def test_the_cpu_command_resolves_to_a_cpu_build(bare_python):
    """What pip would install for that command is a +cpu wheel (pip's own dry run, from this interpreter)."""
    command = run_tool(bare_python, "torch==2.13.0", path=path_without("nvidia-smi")).strip().splitlines()[-1]
    args = [a for a in command.split()[4:] if a != "-q"]
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps",
                        *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Would install torch-2.13.0+cpu" in r.stdout, r.stdout + r.stderr


def test_a_gpu_machine_gets_the_package_index_default(bare_python, tmp_path):
    smi = tmp_path / "nvidia-smi"         # what makes a machine a GPU machine to the tool
    smi.write_text("#!/bin/sh\nexit 0\n")
    smi.chmod(0o755)
    out = run_tool(bare_python, "torch==2.13.0", path=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert "an NVIDIA GPU is present" in out
    assert out.strip().splitlines()[-1].split()[-1] == "torch==2.13.0"          # no extra index


def test_torch_index_url_is_the_explicit_choice(bare_python):
    cu = "https://download.pytorch.org/whl/cu130"
    assert run_tool(bare_python, TORCH_INDEX_URL=cu).strip().endswith(f"torch==2.13.0 --extra-index-url {cu}")
    assert run_tool(bare_python, TORCH_INDEX_URL="").strip().endswith("install -q torch==2.13.0")


def test_an_installed_torch_is_kept():
    out = run_tool(sys.executable, "torch==9.9.9")
    import torch
    assert out.strip() == f"install-torch: torch {torch.__version__} is installed: kept"     # and no command
