"""A Python started in the checkout imports what is installed, not the checkout's folders: only fastgen_core is a
package at the top level (kernels/ holds CUDA sources beside Hugging Face's `kernels` distribution, which
transformers imports), and the processes the front door starts never have the current directory on sys.path."""
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from fastgen_core.server.frontdoor.launcher import module_command

ROOT = Path(__file__).resolve().parents[1]


def test_only_fastgen_core_is_a_package_at_the_top_level():
    packages = sorted(d.name for d in ROOT.iterdir() if d.is_dir() and (d / "__init__.py").is_file()
                      and d.name not in (".venv", ".git"))
    modules = sorted(f.name for f in ROOT.glob("*.py"))
    assert packages == ["fastgen_core"] and modules == [], (
        f"top-level packages {packages} and modules {modules}: a Python started in the checkout imports these in "
        "place of any installed distribution of the same name; only fastgen_core may be one")


def test_no_top_level_folder_is_importable_under_an_installed_modules_name():
    installed = importlib.metadata.packages_distributions()     # top-level module -> distributions
    clash = [d.name for d in ROOT.iterdir() if d.is_dir() and d.name in installed and d.name != "fastgen_core"
             and ((d / "__init__.py").is_file() or list(d.glob("*.py")))]
    assert not clash, f"top-level folders {clash} share a name with installed modules ({installed})"


def test_python_started_in_the_checkout_imports_the_installed_kernels_and_transformers():
    code = ("import importlib.util, transformers.activations; s = importlib.util.find_spec('kernels'); "
            "print(s.origin if s else None)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    origin = r.stdout.strip().splitlines()[-1]
    if origin != "None":
        assert ROOT / "kernels" not in Path(origin).parents, f"`import kernels` found the checkout's {origin}"


def test_processes_the_front_door_starts_do_not_see_the_current_directory(tmp_path):
    (tmp_path / "probe_main.py").write_text("print('imported from the current directory')\n")
    r = subprocess.run(module_command("probe_main"), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "No module named probe_main" in r.stderr, r.stdout + r.stderr


@pytest.mark.parametrize("module", ["fastgen_core.server.replica.main", "fastgen_core.cli"])
def test_the_launcher_runs_a_module_as_main_with_its_arguments(module):
    r = subprocess.run(module_command(module, "--help"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout
