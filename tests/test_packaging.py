"""The distributions carry what they run: the fastgen-core wheel holds every CUDA source of the top-level
kernels/ folder (as fastgen_core._kernels) and every module of the package, and an installed wheel finds its
kernels; a plugin's wheel holds the .cu files inside its package; no package-data glob names a missing file."""
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = sorted(p for p in (ROOT / "plugins").glob("fastgen-*") if (p / "pyproject.toml").is_file())


def tracked(pattern: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", pattern], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.split()


def build_wheel(src: Path, tmp_path: Path, parts: list[str]) -> zipfile.ZipFile:
    """Build the wheel of the project at ``src`` from a copy of ``parts`` (so no build/ is left in the tree)."""
    work = tmp_path / src.name
    for part in parts:
        s = src / part
        if s.is_dir():
            shutil.copytree(s, work / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            work.mkdir(parents=True, exist_ok=True)
            shutil.copy(s, work / part)
    out = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(work),
                        "-w", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    [wheel] = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


@pytest.fixture(scope="module")
def core_wheel(tmp_path_factory):
    return build_wheel(ROOT, tmp_path_factory.mktemp("core"), ["pyproject.toml", "README.md", "fastgen_core",
                                                               "kernels"])


def test_the_core_wheel_carries_every_cuda_source_and_every_module(core_wheel):
    names = set(core_wheel.namelist())
    cu = tracked("kernels/*.cu") + tracked("kernels/*.cuh")      # sources and the headers they include
    assert {"kernels/fused_ops.cu", "kernels/rotary_kv.cu", "kernels/fastgen.cuh", "kernels/gemv.cuh"} <= set(cu)
    missing = [f for f in cu if "fastgen_core/_kernels/" + Path(f).name not in names]
    assert not missing, f"the fastgen-core wheel lacks {missing}"
    modules = [str(p.relative_to(ROOT)) for p in (ROOT / "fastgen_core").rglob("*.py") if "__pycache__" not in p.parts]
    missing = [m for m in modules if m not in names]
    assert not missing, f"the wheel lacks {missing}: list their packages in pyproject.toml's [tool.setuptools] packages"


def test_an_installed_wheel_finds_its_kernels(core_wheel, tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                        core_wheel.filename], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    code = ("import fastgen_core.kernels as k; from fastgen_core.layers.rotary import ROTARY_KV_CU; "
            "print(k.core_source('fused_ops.cu')); print(k.core_source(ROTARY_KV_CU))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    found = [Path(line) for line in r.stdout.split()]
    assert [p.name for p in found] == ["fused_ops.cu", "rotary_kv.cu"]
    assert all(p.is_file() and target in p.parents for p in found), found


@pytest.mark.parametrize("plugin", [p for p in PLUGINS if list((p / "src").rglob("*.cu"))], ids=lambda p: p.name)
def test_a_plugins_wheel_carries_the_cuda_sources_in_its_package(plugin, tmp_path):
    wheel = build_wheel(plugin, tmp_path, ["pyproject.toml", "src"])
    sources = [str(p.relative_to(plugin / "src")) for p in (plugin / "src").rglob("*.cu")]
    missing = [s for s in sources if s not in wheel.namelist()]
    assert not missing, f"{plugin.name}'s wheel lacks {missing}"
    if plugin.name == "fastgen-phi":
        assert "fastgen_phi/kernels/gelu_new.cu" in sources


@pytest.mark.parametrize("project", [ROOT] + PLUGINS, ids=lambda p: p.name)
def test_no_package_data_glob_names_a_missing_file(project):
    setuptools = tomllib.loads((project / "pyproject.toml").read_text()).get("tool", {}).get("setuptools", {})
    where = setuptools.get("packages", {}).get("find", {}).get("where", ["."]) \
        if isinstance(setuptools.get("packages"), dict) else ["."]
    dirs = {k: v for k, v in setuptools.get("package-dir", {}).items()}
    for package, globs in setuptools.get("package-data", {}).items():
        base = project / dirs[package] if package in dirs else project / where[0] / package.replace(".", "/")
        for pattern in globs:
            assert list(base.glob(pattern)), f"{project.name}: package-data {package} = {pattern!r} matches nothing " \
                                             f"in {base.relative_to(project)}"
