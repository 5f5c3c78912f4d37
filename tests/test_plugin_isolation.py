"""Plugins stay independent of each other and of the core's internals, load selectively, and are cheap
to import. Plugin packages are discovered from plugins/*/src/*/ so new families are checked as they land,
with the same checks fastgen_core.testing offers an outside plugin (check_plugin_isolation)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from fastgen_core.testing import check_plugin_import_is_cheap, check_plugin_isolation, check_public_api

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {p.name: p for p in sorted(ROOT.glob("plugins/*/src/*/")) if (p / "__init__.py").is_file()}


def test_plugin_packages_are_discovered():
    assert {"fastgen_qwen2", "fastgen_llama", "fastgen_gptneox"} <= set(PACKAGES), sorted(PACKAGES)


@pytest.mark.parametrize("pkg", sorted(PACKAGES))
def test_plugin_uses_only_the_public_api_and_no_other_plugin(pkg):
    """The checks fastgen_core.testing offers every plugin, run on each in-tree one (its package and tests),
    with the other in-tree packages as the plugins it must not import."""
    tests = PACKAGES[pkg].parents[1] / "tests"
    report = check_public_api(PACKAGES[pkg], tests=tests, other_plugins=set(PACKAGES))
    assert any(f.name == "plugin.py" for f in report.files) and any(tests in f.parents for f in report.files)


@pytest.mark.parametrize("pkg", sorted(PACKAGES))
def test_plugin_module_imports_without_torch(pkg):
    check_plugin_import_is_cheap(PACKAGES[pkg])


BAD_PLUGINS = {
    "imports torch": ("import torch\nfrom fastgen_core import hookimpl\n", "imported torch"),
    "imports a core internal": ("from fastgen_core.loader import load_weights\n",
                                "imports fastgen_core.loader; a plugin may import only"),
    "imports a private name": ("from fastgen_core import first\n", "not in fastgen_core.__all__"),
    "imports another plugin": ("from fastgen_llama.model import weight_map\n", "another plugin's package"),
    "names another plugin lazily": ('SPEC = "fastgen_llama.model:LlamaForCausalLM"\n', "in another plugin's package"),
}


@pytest.mark.parametrize("case", sorted(BAD_PLUGINS))
def test_isolation_checks_catch_each_violation(tmp_path, case):
    source, message = BAD_PLUGINS[case]
    pkg = tmp_path / "fgtest_badplugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "plugin.py").write_text(source)
    with pytest.raises(AssertionError, match=message):
        check_plugin_isolation(pkg, other_plugins={"fastgen_llama"})


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
