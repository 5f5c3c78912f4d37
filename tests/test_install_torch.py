"""`make install`'s torch step (tools/install_torch.py), in a fresh virtualenv without torch: a torch already
installed is kept; a machine without an NVIDIA GPU gets a CPU build (what pip is configured with when that is one,
else PyTorch's CPU index), a machine with a GPU the package index's default, and TORCH_INDEX_URL overrides all.

What the package sources offer is set up with wheels made here (a `torch` whose metadata requires NVIDIA's CUDA
libraries, as the package index's Linux build does, or a `+cpu` one that does not) and pip configured to see
only them; the last test asks the machine's real pip configuration."""
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "install_torch.py"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
DRIVER = Path("/proc/driver/nvidia/version")
no_driver = pytest.mark.skipif(DRIVER.exists(), reason="this machine has an NVIDIA driver")


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """An interpreter with pip and no torch: a fresh virtualenv."""
    d = tmp_path_factory.mktemp("bare-venv")
    venv.create(d, with_pip=True)
    return str(d / "bin" / "python")


def make_wheel(folder: Path, version: str, requires: list[str]) -> None:
    name = f"torch-{version}.dist-info"
    meta = "Metadata-Version: 2.1\nName: torch\nVersion: " + version + "\n" + \
        "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {"torch/__init__.py": "", f"{name}/METADATA": meta,
             f"{name}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{name}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{name}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"torch-{version}-py3-none-any.whl", "w") as z:
        for f, text in files.items():
            z.writestr(f, text)


def sources(tmp_path, *wheels) -> dict:
    """pip sees only these wheels (no configuration files, no index)."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    for version, requires in wheels:
        make_wheel(folder, version, requires)
    return {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(folder)}


def path_without(program: str) -> str:
    return os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep)
                           if d and not os.access(os.path.join(d, program), os.X_OK))


def run_tool(python, pip_env=None, path=None, **env_changes):
    """(message, pip command) of a dry run."""
    env = {k: v for k, v in os.environ.items() if k != "TORCH_INDEX_URL" and not (pip_env and k.startswith("PIP_"))}
    env.update(pip_env or {}, PATH=path if path is not None else path_without("nvidia-smi"), **env_changes)
    r = subprocess.run([python, str(TOOL), "torch==2.13.0", "--dry-run"], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    return lines[0], (lines[1].split() if len(lines) > 1 else None)


@no_driver
def test_where_the_index_gives_a_cuda_build_a_cpu_machine_gets_pytorchs_cpu_index(bare_python, tmp_path):
    pip_env = sources(tmp_path, ("2.13.0", ["filelock", "nvidia-cuda-runtime==13.0.96; platform_system == 'Linux'"]))
    message, command = run_tool(bare_python, pip_env)
    assert message.startswith(f"install-torch: installing torch==2.13.0, PyTorch's CPU build, from {CPU_INDEX}: no "
                               "NVIDIA GPU (no nvidia-smi), and the package index's torch 2.13.0 is a CUDA build")
    assert "TORCH_INDEX_URL" in message
    assert command == [bare_python, "-m", "pip", "install", "-q", "torch==2.13.0", "--extra-index-url", CPU_INDEX]


@no_driver
def test_where_pip_already_gives_a_cpu_build_it_is_installed_as_configured(bare_python, tmp_path):
    pip_env = sources(tmp_path, ("2.13.0+cpu", ["filelock"]))
    message, command = run_tool(bare_python, pip_env)
    assert "it resolves to torch 2.13.0+cpu, a CPU build (no NVIDIA libraries)" in message
    assert command == [bare_python, "-m", "pip", "install", "-q", "torch==2.13.0"]


@no_driver
def test_where_pip_cannot_tell_a_cpu_machine_gets_pytorchs_cpu_index(bare_python, tmp_path):
    message, command = run_tool(bare_python, sources(tmp_path))
    assert "pip could not tell which build" in message and command[-2:] == ["--extra-index-url", CPU_INDEX]


@no_driver
def test_the_command_resolves_to_a_cpu_build_here(bare_python):
    """With this machine's own pip configuration, what pip would install for the chosen command is a CPU build
    (pip's own dry run)."""
    _, command = run_tool(bare_python)
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps",
                        *[a for a in command[4:] if a != "-q"]], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Would install torch-2.13.0+cpu" in r.stdout, r.stdout + r.stderr


def test_a_gpu_machine_gets_the_package_index_default(bare_python, tmp_path):
    smi = tmp_path / "nvidia-smi"         # what makes a machine a GPU machine to the tool
    smi.write_text("#!/bin/sh\nexit 0\n")
    smi.chmod(0o755)
    message, command = run_tool(bare_python, path=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert "(its default build: CUDA on Linux): an NVIDIA GPU is present" in message
    assert command[-1] == "torch==2.13.0"          # no extra index


def test_torch_index_url_is_the_explicit_choice(bare_python):
    cu = "https://download.pytorch.org/whl/cu130"
    assert run_tool(bare_python, TORCH_INDEX_URL=cu)[1][-3:] == ["torch==2.13.0", "--extra-index-url", cu]
    assert run_tool(bare_python, TORCH_INDEX_URL="")[1][-1] == "torch==2.13.0"


def test_an_installed_torch_is_kept():
    import torch
    message, command = run_tool(sys.executable)
    assert message == f"install-torch: torch {torch.__version__} is installed: kept" and command is None
