"""The plugin API version: a plugin declares the version it is written for (FASTGEN_PLUGIN_API), the core refuses
one written for a newer core, warns about an older or undeclared one naming what changed, and `fastgen plugins`
shows what each declares. Throwaway distributions with real entry points, as in test_plugins.py."""
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import fastgen_core as fg
from fastgen_core.plugins import PLUGIN_API_CHANGES, PluginAPIError, get_plugin_set
from fastgen_core.registry import FamilyRegistry

sys.path.insert(0, str(Path(__file__).parent))
from test_plugins import site, write_dist  # noqa: E402,F401  (site: a fixture)

ROOT = Path(__file__).resolve().parents[1]
CURRENT = fg.PLUGIN_API_VERSION
NEWER = CURRENT + 1


def plugin(family: str, declaration: str = "") -> str:
    """A plugin module registering a Llama-shaped family under its own architecture, with ``declaration``."""
    return f'''
from fastgen_core import ModelFamily, hookimpl
{declaration}

@hookimpl
def register_model_families(register):
    register(ModelFamily(name="{family}", architectures=("{family.title()}ForCausalLM",),
                         config="fastgen_llama.model:LlamaConfig", model="fastgen_llama.model:LlamaForCausalLM",
                         weights="fastgen_llama.model:weight_map"))
'''


def test_the_core_exports_its_version_and_every_version_up_to_it_says_what_changed():
    assert fg.PLUGIN_API_VERSION == 3 and "PLUGIN_API_VERSION" in fg.__all__
    assert sorted(PLUGIN_API_CHANGES) == list(range(1, CURRENT + 1))
    assert "tp=config.tp" in PLUGIN_API_CHANGES[2]


def test_a_plugin_for_a_newer_core_is_refused_naming_both_versions_and_the_others_load(site):
    write_dist(site, "fastgen-future", "3.0", "fgtest_apifuture", plugin("future", f"FASTGEN_PLUGIN_API = {NEWER}"))
    write_dist(site, "fastgen-current", "1.0", "fgtest_apicurrent", plugin("current",
                                                                            f"FASTGEN_PLUGIN_API = {CURRENT}"))
    with pytest.warns(RuntimeWarning, match="fastgen plugin 'apifuture' from fastgen-future 3.0 failed to load"):
        reg = FamilyRegistry()
    [failure] = reg.plugins.failed
    assert failure.name == "apifuture" and failure.dist == "fastgen-future"
    assert f"targets plugin API {NEWER}" in failure.error, failure.error
    assert f"has plugin API {CURRENT}" in failure.error and "upgrade fastgen-core" in failure.error, failure.error
    assert "apifuture" not in reg.plugins.loaded
    assert "future" not in {rf.family.name for rf in reg.families}
    # the others keep working: the current fake and every in-tree family
    assert reg.resolve({"architectures": ["CurrentForCausalLM"]}).dist == "fastgen-current"
    assert reg.resolve({"architectures": ["LlamaForCausalLM"]}).dist == "fastgen-llama"
    assert reg.plugins.notes == [], "a plugin declaring the current version is not warned about"


def test_strict_mode_raises_the_refusal(site, monkeypatch):
    write_dist(site, "fastgen-future", "3.0", "fgtest_apifuturestrict",
               plugin("futurestrict", f"FASTGEN_PLUGIN_API = {NEWER}"))
    monkeypatch.setenv("FASTGEN_STRICT_PLUGINS", "1")
    with pytest.raises(PluginAPIError, match=f"targets plugin API {NEWER}, but this fastgen-core"):
        get_plugin_set()


def test_a_plugin_for_an_older_core_loads_with_a_warning_naming_what_changed(site):
    write_dist(site, "fastgen-old", "0.9", "fgtest_apiold", plugin("old", "FASTGEN_PLUGIN_API = 1"))
    with pytest.warns(RuntimeWarning, match="fastgen plugin 'apiold' from fastgen-old 0.9 targets plugin API 1") as w:
        reg = FamilyRegistry()
    [message] = [str(m.message) for m in w if "apiold" in str(m.message)]
    assert PLUGIN_API_CHANGES[2] in message and f"FASTGEN_PLUGIN_API = {CURRENT} in fgtest_apiold" in message
    assert message in reg.plugins.notes                 # what `fastgen plugins` prints as a NOTE
    assert reg.plugins.loaded["apiold"].api == 1 and not reg.plugins.failed
    assert reg.resolve({"architectures": ["OldForCausalLM"]}).dist == "fastgen-old"


def test_a_plugin_that_declares_nothing_is_taken_as_version_1_with_a_warning(site):
    write_dist(site, "fastgen-nodecl", "0.1", "fgtest_apinodecl", plugin("nodecl"))
    with pytest.warns(RuntimeWarning, match="'apinodecl' from fastgen-nodecl 0.1 declares no plugin API version, so "
                                            "it is taken to target plugin API 1") as w:
        reg = FamilyRegistry()
    [message] = [str(m.message) for m in w if "apinodecl" in str(m.message)]
    assert PLUGIN_API_CHANGES[2] in message
    assert f"declare FASTGEN_PLUGIN_API = {CURRENT} in fgtest_apinodecl" in message
    assert reg.plugins.loaded["apinodecl"].api is None and not reg.plugins.failed
    assert reg.resolve({"architectures": ["NodeclForCausalLM"]}).dist == "fastgen-nodecl"


@pytest.mark.parametrize("declared, message", [("'2'", f"must be a whole number such as {CURRENT}, got '2'"),
                                               ("0", "older than the oldest this core loads")])
def test_a_declaration_the_core_cannot_use_is_refused(site, declared, message):
    suffix = declared.strip("'")
    write_dist(site, "fastgen-bad", "0.1", f"fgtest_apibad{suffix}", plugin(f"bad{suffix}",
                                                                           f"FASTGEN_PLUGIN_API = {declared}"))
    with pytest.warns(RuntimeWarning, match="failed to load"):
        reg = FamilyRegistry()
    [failure] = reg.plugins.failed
    assert message in failure.error, failure.error
    assert reg.resolve({"architectures": ["LlamaForCausalLM"]}).dist == "fastgen-llama"


def test_every_in_tree_plugin_declares_the_current_version():
    reg = FamilyRegistry()
    dists = {p.name for p in (ROOT / "plugins").glob("fastgen-*")}
    loaded = {info.dist: info.api for info in reg.plugins.loaded.values() if info.dist in dists}
    assert loaded == {d: CURRENT for d in dists}, loaded
    assert not [n for n in reg.plugins.notes if "plugin API" in n], reg.plugins.notes


def test_check_registration_asks_for_a_declaration():
    from fastgen_core.testing import check_registration
    undeclared = types.ModuleType("fgtest_undeclared_inprocess")
    exec(plugin("inproc"), undeclared.__dict__)
    with pytest.raises(AssertionError, match=f"declares no plugin API version: add FASTGEN_PLUGIN_API = {CURRENT}"):
        check_registration(undeclared, "inproc", ["InprocForCausalLM"], [])
    undeclared.FASTGEN_PLUGIN_API = NEWER
    with pytest.raises(AssertionError, match=f"targets plugin API {NEWER}"):
        check_registration(undeclared, "inproc", ["InprocForCausalLM"], [])
    undeclared.FASTGEN_PLUGIN_API = CURRENT
    assert check_registration(undeclared, "inproc", ["InprocForCausalLM"], []).family.name == "inproc"


def test_fastgen_plugins_shows_each_plugins_declared_version(site):
    write_dist(site, "fastgen-future", "3.0", "fgtest_apifuture", plugin("future", f"FASTGEN_PLUGIN_API = {NEWER}"))
    write_dist(site, "fastgen-old", "0.9", "fgtest_apiold", plugin("old", "FASTGEN_PLUGIN_API = 1"))
    write_dist(site, "fastgen-nodecl", "0.1", "fgtest_apinodecl", plugin("nodecl"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FASTGEN_")},
           "PYTHONPATH": os.pathsep.join([str(site)] + sys.path)}
    out = subprocess.run([sys.executable, "-m", "fastgen_core.cli", "plugins"], capture_output=True, text=True,
                         env=env, check=True).stdout
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert f"fastgen-llama 0.1.0  plugin API {CURRENT}  architectures: LlamaForCausalLM" in lines["llama"], out
    assert "fastgen-old 0.9  plugin API 1  architectures: OldForCausalLM" in lines["old"], out
    assert "fastgen-nodecl 0.1  plugin API not declared  architectures:" in lines["nodecl"], out
    assert f"FAILED     fastgen-future 3.0 (entry point 'apifuture'): PluginAPIError: the plugin targets plugin API " \
           f"{NEWER}, but this fastgen-core" in out, out
    notes = [line for line in out.splitlines() if line.startswith("NOTE")]
    assert any("'apiold'" in n and "targets plugin API 1" in n for n in notes), out
    assert any("'apinodecl'" in n and "declares no plugin API version" in n for n in notes), out
    data = json.loads(subprocess.run([sys.executable, "-m", "fastgen_core.cli", "plugins", "--json"],
                                     capture_output=True, text=True, env=env, check=True).stdout)
    assert data["core_plugin_api"] == CURRENT
    declared = {f["family"]: f["plugin_api"] for f in data["families"]}
    assert (declared["llama"], declared["qwen3"], declared["old"], declared["nodecl"]) == (CURRENT, CURRENT, 1, None)
    assert [f["plugin"] for f in data["failed"]] == ["apifuture"]


def test_the_guide_and_the_changelog_name_every_version():
    import re
    guide = (ROOT / "docs" / "writing-a-plugin.md").read_text()
    section = guide.split("## Plugin API version", 1)[1].split("\n## ", 1)[0]
    assert f"FASTGEN_PLUGIN_API = {CURRENT}" in section
    assert [int(v) for v in re.findall(r"^\| (\d+) \| ", section, re.M)] == sorted(PLUGIN_API_CHANGES)
    assert f"Plugin API {CURRENT}" in (ROOT / "CHANGELOG.md").read_text()
