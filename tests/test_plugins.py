"""Plugin discovery through real entry points: throwaway distributions are written to a directory on sys.path."""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastgen_core as fg
from fastgen_core.plugins import get_plugin_set
from fastgen_core.registry import FamilyRegistry

GOOD = '''
from fastgen_core import ModelFamily, hookimpl

@hookimpl
def register_model_families(register):
    # a Llama-shaped model under its own architecture name, built from the llama plugin's code
    register(ModelFamily(name="fake", architectures=("FakeForCausalLM",), model_types=("fake",),
                         config="fastgen_llama.model:LlamaConfig", model="fastgen_llama.model:LlamaForCausalLM",
                         weights="fastgen_llama.model:weight_map"))

@hookimpl
def resolve_model_family(hf_config, model_path):
    if hf_config.get("model_type") == "fake-by-hook":
        return ModelFamily(name="fake-hook", model_types=("fake-by-hook",),
                           config="fastgen_llama.model:LlamaConfig", model="fastgen_llama.model:LlamaForCausalLM",
                           weights="fastgen_llama.model:weight_map")
'''
BROKEN = "import this_module_does_not_exist_anywhere\n"
CLASH = '''
from fastgen_core import ModelFamily, hookimpl

@hookimpl
def register_model_families(register):
    register(ModelFamily(name="llama-clone", architectures=("LlamaForCausalLM",),
                         config="fastgen_llama.model:LlamaConfig", model="fastgen_llama.model:LlamaForCausalLM",
                         weights="fastgen_llama.model:weight_map"))
'''


def write_dist(root, dist, version, module, source):
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[fastgen]\n{module.removeprefix('fgtest_')} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    for var in ("FASTGEN_LOAD_PLUGINS", "FASTGEN_DISABLE_PLUGINS", "FASTGEN_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    return root


@pytest.fixture
def llama_dir(tmp_path):
    from fastgen_core.testing import save_tiny_model
    from transformers import LlamaConfig
    path = tmp_path / "m"
    save_tiny_model(LlamaConfig(hidden_size=32, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                                num_hidden_layers=1, vocab_size=64, max_position_embeddings=64), path)
    return path


def retag(model_dir, **fields):
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg.update(fields)
    (model_dir / "config.json").write_text(json.dumps(cfg))


def test_installed_plugin_is_discovered_and_runs(site, llama_dir):
    write_dist(site, "fastgen-fake", "1.2.3", "fgtest_fake", GOOD)
    reg = FamilyRegistry()
    rf = reg.resolve({"architectures": ["FakeForCausalLM"]})
    assert (rf.family.name, rf.dist, rf.version) == ("fake", "fastgen-fake", "1.2.3")
    retag(llama_dir, architectures=["FakeForCausalLM"], model_type="fake")
    out = fg.pipeline(str(llama_dir), device="cpu", registry=reg)([[1, 2, 3]], max_new_tokens=3, ignore_eos=True)
    assert out[0].generated_length == 3
    # the firstresult hook is asked only when no architecture or model_type matched
    assert reg.resolve({"architectures": ["Unknown"], "model_type": "fake-by-hook"}).family.name == "fake-hook"


def test_broken_plugin_is_reported_and_the_others_keep_working(site, llama_dir):
    write_dist(site, "fastgen-broken", "0.0.1", "fgtest_broken", BROKEN)
    with pytest.warns(RuntimeWarning, match="fastgen plugin 'broken' from fastgen-broken 0.0.1 failed to load"):
        reg = FamilyRegistry()
    [failure] = [f for f in reg.plugins.failed if f.name == "broken"]
    assert failure.dist == "fastgen-broken" and "this_module_does_not_exist_anywhere" in failure.error
    out = fg.pipeline(str(llama_dir), device="cpu", registry=reg)([[1, 2]], max_new_tokens=2, ignore_eos=True)
    assert out[0].generated_length == 2


def test_strict_mode_reraises(site, monkeypatch):
    write_dist(site, "fastgen-broken", "0.0.1", "fgtest_broken", BROKEN)
    monkeypatch.setenv("FASTGEN_STRICT_PLUGINS", "1")
    with pytest.raises(ModuleNotFoundError):
        get_plugin_set()


def test_clash_names_both_distributions_and_every_way_out_works(site, monkeypatch, llama_dir):
    """The error names both claimants with their entry points, and each remedy it suggests really works:
    each FASTGEN_DISABLE_PLUGINS value, family= in the pipeline, and the serve command line it prints."""
    write_dist(site, "fastgen-clash", "9.9", "fgtest_clash", CLASH)
    reg = FamilyRegistry()
    with pytest.raises(fg.DuplicateFamilyError, match=r"LlamaForCausalLM.*(fastgen-llama.*fastgen-clash|fastgen-clash.*fastgen-llama)") as e:
        reg.resolve({"architectures": ["LlamaForCausalLM"]})
    msg = str(e.value)
    assert "fastgen-clash (family 'llama-clone', entry point 'clash')" in msg, msg
    assert "fastgen-llama (family 'llama', entry point 'llama')" in msg, msg
    # other architectures are unaffected
    assert reg.resolve({"architectures": ["MistralForCausalLM"]}).family.name == "llama"

    disabled = re.findall(r"FASTGEN_DISABLE_PLUGINS=(\S+) \(drops (\S+)\)", msg)
    assert sorted(disabled) == [("clash", "fastgen-clash"), ("llama", "fastgen-llama")], msg
    for entry_point, dropped in disabled:
        monkeypatch.setenv("FASTGEN_DISABLE_PLUGINS", entry_point)
        rf = FamilyRegistry().resolve({"architectures": ["LlamaForCausalLM"]})
        assert rf.dist != dropped and rf.dist in ("fastgen-llama", "fastgen-clash")
    monkeypatch.delenv("FASTGEN_DISABLE_PLUGINS")

    family = re.search(r"pipeline\(model, family='([^']+)'\)", msg).group(1)
    out = fg.pipeline(str(llama_dir), device="cpu", family=family)([[1, 2, 3]], max_new_tokens=2, ignore_eos=True)
    assert out[0].generated_length == 2
    from fastgen_core.cli import build_parser
    from fastgen_core.server.cli import settings_from_args
    from fastgen_core.server.frontdoor.main import _check_model
    options = re.search(r"fastgen serve --engine-options '([^']+)'", msg).group(1)
    settings = settings_from_args(build_parser().parse_args(["serve", "--model", str(llama_dir), "--engine-options",
                                                             options]))
    assert settings.engine_options == {"family": family}
    _check_model(settings)          # what `fastgen serve` does before starting replicas: resolves, no clash


def test_a_family_name_two_distributions_register_is_refused_by_name(site):
    # its own module name: an earlier test may have imported fgtest_clash already
    write_dist(site, "fastgen-samename", "9.9", "fgtest_samename", CLASH.replace('name="llama-clone"', 'name="llama"'))
    reg = FamilyRegistry()
    with pytest.raises(fg.DuplicateFamilyError) as e:
        reg.resolve({"architectures": ["LlamaForCausalLM"]})
    assert "family=" not in str(e.value), "family='llama' cannot choose between two families named 'llama'"
    with pytest.raises(fg.DuplicateFamilyError, match=r"family 'llama' is registered by more than one .*"
                                                      r"FASTGEN_DISABLE_PLUGINS=samename \(drops fastgen-samename\)"):
        reg.resolve({"architectures": ["LlamaForCausalLM"]}, family="llama")


def test_load_plugins_allowlist(site, monkeypatch):
    write_dist(site, "fastgen-fake", "1.2.3", "fgtest_fake", GOOD)
    monkeypatch.setenv("FASTGEN_LOAD_PLUGINS", "fake")
    reg = FamilyRegistry()
    assert [rf.family.name for rf in reg.families] == ["fake"]
    with pytest.raises(fg.UnsupportedModelError, match="Supported architectures: \\['FakeForCausalLM'\\]"):
        reg.resolve({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})


def test_register_rejects_non_families():
    ps = get_plugin_set(autoload=False)

    class Bad:
        @fg.hookimpl
        def register_model_families(self, register):
            register({"name": "dict-is-not-a-family"})

    ps.register(Bad(), name="bad")
    reg = FamilyRegistry(ps)
    assert reg.families == [] and "takes a fastgen_core.ModelFamily" in reg.errors[0]


def test_fastgen_plugins_command_lists_families_failures_and_clashes(site):
    write_dist(site, "fastgen-broken", "0.0.1", "fgtest_broken", BROKEN)
    write_dist(site, "fastgen-clash", "9.9", "fgtest_clash", CLASH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site)] + sys.path)}
    out = subprocess.run([sys.executable, "-m", "fastgen_core.cli", "plugins"], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert "llama" in out and "fastgen-llama" in out
    assert "FAILED     fastgen-broken 0.0.1" in out
    assert "CLASH      'LlamaForCausalLM'" in out and "fastgen-clash" in out
    data = json.loads(subprocess.run([sys.executable, "-m", "fastgen_core.cli", "plugins", "--json"],
                                     capture_output=True, text=True, env=env, check=True).stdout)
    assert any(f["family"] == "llama" and f["distribution"] == "fastgen-llama" for f in data["families"])
    assert any(f["distribution"] == "fastgen-broken" for f in data["failed"])


def test_model_family_validates_itself():
    with pytest.raises(ValueError, match="claims no architectures"):
        fg.ModelFamily(name="x", config="a:b", model="a:b", weights="a:b")
    with pytest.raises(ValueError, match="must be a 'module:attr' string"):
        fg.ModelFamily(name="x", architectures=("X",), config="a.b", model="a:b", weights="a:b")


def test_fastgen_plugins_lists_all_seven_distributions_with_their_families():
    out = subprocess.run([sys.executable, "-m", "fastgen_core.cli", "plugins", "--json"], capture_output=True,
                         text=True, check=True).stdout
    got = {f["family"]: f["distribution"] for f in json.loads(out)["families"]}
    want = {"llama": "fastgen-llama", "mixtral": "fastgen-mixtral", "falcon": "fastgen-falcon", "phi": "fastgen-phi",
            "opt": "fastgen-opt", "qwen2": "fastgen-qwen2", "qwen3": "fastgen-qwen2", "gptneox": "fastgen-gptneox"}
    assert {k: got.get(k) for k in want} == want
    in_tree = {p.name for p in (Path(__file__).resolve().parents[1] / "plugins").glob("fastgen-*")}
    assert set(want.values()) == in_tree and len(in_tree) == 7, sorted(in_tree)
