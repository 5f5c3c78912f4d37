"""The README's two set-up commands install into a virtualenv, never into the system's Python: the project's own
.venv/ when none is active, the active one otherwise; and the tested dependency versions are on record."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def planned(target: str, **env) -> str:
    """What ``make -n target`` would run, in an environment without a virtualenv plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHON", "MAKEFLAGS", "MAKELEVEL")}
    r = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, env={**base, **env},
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("target", ["demo", "test"])
def test_without_an_active_virtualenv_make_uses_the_projects_own(target):
    plan = planned(target)
    assert "python3 -m venv .venv" in plan, plan
    runs = [line for line in plan.splitlines() if "fastgen_core.cli generate" in line or "-m pytest" in line]
    assert runs and all(line.startswith(".venv/bin/python ") for line in runs), plan
    installs = [line for line in plan.splitlines() if "pip install" in line]
    assert installs and all(line.startswith(".venv/bin/python -m pip") for line in installs), plan


def test_an_active_virtualenv_is_used_as_it_is(tmp_path):
    plan = planned("demo", VIRTUAL_ENV=str(tmp_path))
    assert "python -m fastgen_core.cli generate" in plan and ".venv/bin/python -m fastgen_core" not in plan, plan


def test_the_tested_versions_are_recorded_and_printed():
    pins = (ROOT / "constraints" / "tested.txt").read_text().splitlines()
    names = {line.split("==")[0] for line in pins if "==" in line}
    assert {"torch", "transformers", "tokenizers", "safetensors", "pluggy"} <= names, names
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "deps.py"), "show"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "deps: the last green test run" in r.stdout and "transformers" in r.stdout, r
