"""The plugin registers through the public hook, without entry points (as a test or an in-process
plugin would), and the registry attributes, resolves and reports clashes for it."""
import pytest
from transformers import Qwen2Config as HFQwen2Config

import fastgen_qwen2.plugin
from fastgen_core import (DuplicateFamilyError, FamilyRegistry, ModelFamily, UnsupportedModelError, get_plugin_set,
                          hookimpl, pipeline)
from fastgen_core.testing import hf_greedy, random_prompts, save_tiny_model


def qwen2_only_registry():
    ps = get_plugin_set(autoload=False)
    ps.register(fastgen_qwen2.plugin, "qwen2")
    return FamilyRegistry(ps)


def test_register_and_resolve_without_entry_points():
    reg = qwen2_only_registry()
    assert reg.errors == [] and [rf.family.name for rf in reg.families] == ["qwen2", "qwen3"]
    assert reg.resolve({"architectures": ["Qwen2ForCausalLM"]}).family.name == "qwen2"
    assert reg.resolve({"architectures": ["Qwen3ForCausalLM"]}).family.name == "qwen3"
    assert reg.resolve({"model_type": "qwen2"}).plugin == "qwen2"
    with pytest.raises(UnsupportedModelError,
                       match=r"Supported architectures: \['Qwen2ForCausalLM', 'Qwen3ForCausalLM'\]"):
        reg.resolve({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})


def test_registered_family_runs_like_transformers(tmp_path):
    cfg = HFQwen2Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                        num_hidden_layers=2, vocab_size=96, max_position_embeddings=256, tie_word_embeddings=True)
    ref = save_tiny_model(cfg, tmp_path)
    prompts = random_prompts(4, cfg.vocab_size, 1, 40)
    pipe = pipeline(str(tmp_path), device="cpu", dtype="float32", kv_block_size=8, registry=qwen2_only_registry())
    outs = pipe(prompts, max_new_tokens=6, ignore_eos=True)
    assert [o.token_ids for o in outs] == [hf_greedy(ref, p, 6) for p in prompts]


class _Impostor:
    """A second distribution claiming Qwen2ForCausalLM."""

    @staticmethod
    @hookimpl
    def register_model_families(register):
        register(ModelFamily(name="other-qwen", architectures=("Qwen2ForCausalLM",), config="x:C", model="x:M",
                             weights="x:W"))


def test_clash_is_reported_naming_both_distributions():
    ps = get_plugin_set(autoload=False)
    ps.register(fastgen_qwen2.plugin, "qwen2", dist="fastgen-qwen2")
    ps.register(_Impostor(), "impostor", dist="fastgen-impostor")
    reg = FamilyRegistry(ps)
    with pytest.raises(DuplicateFamilyError) as e:
        reg.resolve({"architectures": ["Qwen2ForCausalLM"]})
    assert "fastgen-qwen2" in str(e.value) and "fastgen-impostor" in str(e.value)
    assert reg.resolve({"architectures": ["Qwen2ForCausalLM"]}, family="qwen2").dist == "fastgen-qwen2"


def test_stays_a_plugin():
    """Only the core's public API, no other plugin, and a plugin.py that imports without torch: the checks
    fastgen_core.testing offers every plugin."""
    from pathlib import Path

    from fastgen_core.testing import check_plugin_isolation
    report = check_plugin_isolation("fastgen_qwen2", tests=Path(__file__).resolve().parent)
    assert {"plugin.py", "model.py", "weights.py", "test_qwen2_registration.py"} <= {f.name for f in report.files}
