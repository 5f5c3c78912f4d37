"""Plugins stay independent of each other and of the core's internals, load selectively, and are cheap
to import. Plugin packages are discovered from plugins/*/src/*/ so new families are checked as they land."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import fastgen_core

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {p.name: p for p in sorted(ROOT.glob("plugins/*/src/*/")) if (p / "__init__.py").is_file()}
# The plugin written as an outside contributor would: it may use only these core modules.
PUBLIC_CORE_SRC = {"fastgen_core", "fastgen_core.layers"}
PUBLIC_CORE_TESTS = PUBLIC_CORE_SRC | {"fastgen_core.testing"}
LAZY_SPEC = re.compile(r"^([A-Za-z_]\w*)(?:\.\w+)*:\w+(?:\.\w+)*$")     # "fastgen_x.model:Class"


def plugin_files(pkg: str) -> list[Path]:
    """Every .py file of the distribution that ships ``pkg`` (its package and its tests)."""
    dist_dir = PACKAGES[pkg].parents[1]
    return sorted(f for f in dist_dir.rglob("*.py") if "build" not in f.relative_to(dist_dir).parts)


def imported_modules(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) for each import statement; relative imports are skipped."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, [a.name for a in node.names], node.lineno))
    return out


def lazy_specs(path: Path) -> list[tuple[str, int]]:
    """String constants shaped like ModelFamily's lazy "module:attr" references."""
    return [(n.value, n.lineno) for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and LAZY_SPEC.match(n.value)]


def test_plugin_packages_are_discovered():
    assert "fastgen_qwen2" in PACKAGES and "fastgen_llama" in PACKAGES, sorted(PACKAGES)


@pytest.mark.parametrize("pkg", sorted(PACKAGES))
def test_no_plugin_imports_another_plugin(pkg):
    others = set(PACKAGES) - {pkg}
    bad = []
    for f in plugin_files(pkg):
        for module, _, line in imported_modules(f):
            if module.split(".")[0] in others:
                bad.append(f"{f.relative_to(ROOT)}:{line} imports {module}")
        for spec, line in lazy_specs(f):
            if LAZY_SPEC.match(spec).group(1) in others:
                bad.append(f"{f.relative_to(ROOT)}:{line} names {spec!r}")
    assert not bad, f"plugin {pkg} depends on another plugin's package (shared code belongs in fastgen_core): {bad}"


def test_qwen2_uses_only_the_public_core_api():
    public_names = set(fastgen_core.__all__)
    bad = []
    for f in plugin_files("fastgen_qwen2"):
        allowed = PUBLIC_CORE_TESTS if "tests" in f.parts else PUBLIC_CORE_SRC
        for module, names, line in imported_modules(f):
            where = f"{f.relative_to(ROOT)}:{line}"
            if module.split(".")[0] != "fastgen_core":
                continue
            if module not in allowed:
                bad.append(f"{where} imports {module} (allowed: {sorted(allowed)})")
            elif module == "fastgen_core" and set(names) - public_names:
                bad.append(f"{where} imports {sorted(set(names) - public_names)} from fastgen_core, "
                           "which are not in fastgen_core.__all__")
    assert not bad, bad


def _run(code: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FASTGEN_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=ROOT)


def test_load_plugins_allowlist_runs_qwen2_and_refuses_llama(tmp_path):
    if not any(ep.name == "qwen2" for ep in entry_points(group="fastgen")):
        pytest.fail("the fastgen-qwen2 distribution is not installed: "
                    "pip install --no-deps --no-build-isolation -e plugins/fastgen-qwen2")
    code = f"""
        import json, sys
        from transformers import LlamaConfig, Qwen2Config
        from fastgen_core import FamilyRegistry, UnsupportedModelError, pipeline
        from fastgen_core.testing import hf_greedy, random_prompts, save_tiny_model

        tiny = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                    num_hidden_layers=2, vocab_size=96, max_position_embeddings=128)
        reg = FamilyRegistry()
        ref = save_tiny_model(Qwen2Config(**tiny), {str(tmp_path / "qwen2")!r})
        prompts = random_prompts(3, 96, 1, 30)
        pipe = pipeline({str(tmp_path / "qwen2")!r}, device="cpu", dtype="float32", kv_block_size=8, registry=reg)
        got = [o.token_ids for o in pipe(prompts, max_new_tokens=5, ignore_eos=True)]
        save_tiny_model(LlamaConfig(**tiny), {str(tmp_path / "llama")!r})
        try:
            pipeline({str(tmp_path / "llama")!r}, device="cpu", dtype="float32", registry=reg)
            refusal = None
        except UnsupportedModelError as e:
            refusal = str(e)
        print(json.dumps(dict(loaded=sorted(reg.plugins.loaded), families=[rf.family.name for rf in reg.families],
                              matches=got == [hf_greedy(ref, p, 5) for p in prompts], refusal=refusal,
                              plugin_modules=sorted({{m.split(".")[0] for m in sys.modules}} & set({sorted(PACKAGES)!r})))))
    """
    proc = _run(code, {"FASTGEN_LOAD_PLUGINS": "qwen2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["loaded"] == ["qwen2"] and result["families"] == ["qwen2", "qwen3"], result
    assert result["plugin_modules"] == ["fastgen_qwen2"], f"other plugins were imported: {result}"
    assert result["matches"], "the qwen2 model loaded through the allowlist disagrees with transformers"
    assert result["refusal"] is not None, "a Llama model ran although only the qwen2 plugin was loaded"
    assert "LlamaForCausalLM" in result["refusal"]
    assert "Supported architectures: ['Qwen2ForCausalLM', 'Qwen3ForCausalLM']" in result["refusal"]

    listing = _run("from fastgen_core.cli import main; main(['plugins'])", {"FASTGEN_LOAD_PLUGINS": "qwen2"})
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert [line.split()[0] for line in listing.stdout.splitlines()] == ["qwen2", "qwen3"], listing.stdout


@pytest.mark.parametrize("pkg", sorted(PACKAGES))
def test_plugin_module_imports_without_torch(pkg):
    assert (PACKAGES[pkg] / "plugin.py").is_file(), f"{pkg} has no plugin.py (hookimpls live there, cheap to import)"
    code = f"""
        import sys
        sys.path.insert(0, {str(PACKAGES[pkg].parent)!r})   # works whether or not the plugin is installed
        import {pkg}.plugin
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "cupy"))
        print(",".join(heavy[:5]))
    """
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "", (f"importing {pkg}.plugin imported {proc.stdout.strip()}; "
                                       "name heavy objects as lazy 'module:attr' strings instead")
