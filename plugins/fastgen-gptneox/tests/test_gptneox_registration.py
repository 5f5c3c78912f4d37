"""The plugin registers through its hook (no entry points needed), and stays a plugin: only the core's
public API, no other plugin, and a plugin.py that imports without torch (fastgen_core.testing's checks)."""
from pathlib import Path

import fastgen_gptneox.plugin
from fastgen_core.testing import check_plugin_isolation, check_registration


def test_family_is_registered():
    from fastgen_gptneox.model import GPTNeoXConfig, GPTNeoXForCausalLM
    rf = check_registration(fastgen_gptneox.plugin, "gptneox", ["GPTNeoXForCausalLM"], ["gpt_neox"],
                            model_class=GPTNeoXForCausalLM, config_class=GPTNeoXConfig)
    assert rf.family.weights == "fastgen_gptneox.weights:weight_map"


def test_uses_only_the_public_api_and_imports_cheaply():
    tests = Path(__file__).resolve().parent
    report = check_plugin_isolation("fastgen_gptneox", tests=tests)
    names = {f.name for f in report.files}
    assert {"plugin.py", "model.py", "weights.py", Path(__file__).name} <= names, names
