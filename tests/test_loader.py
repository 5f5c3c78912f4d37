"""Checkpoint loading errors name the offending tensor; dummy weights need only config.json."""
import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import fastgen_core as fg


@pytest.fixture
def ckpt(tiny_model_dir, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir[0], path)
    return path


def edit_weights(path, fn):
    f = path / "model.safetensors"
    state = load_file(str(f))
    fn(state)
    save_file(state, str(f))


def test_missing_tensor_is_named(ckpt):
    edit_weights(ckpt, lambda s: s.pop("model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(fg.WeightLoadError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight"):
        fg.pipeline(str(ckpt), device="cpu")


def test_unexpected_tensor_is_named(ckpt):
    edit_weights(ckpt, lambda s: s.__setitem__("model.layers.0.extra.weight", torch.zeros(3)))
    with pytest.raises(fg.WeightLoadError, match=r"unexpected tensor 'model\.layers\.0\.extra\.weight'"):
        fg.pipeline(str(ckpt), device="cpu")


def test_misshaped_tensor_is_named(ckpt):
    edit_weights(ckpt, lambda s: s.__setitem__("model.norm.weight", torch.ones(7)))
    with pytest.raises(fg.WeightLoadError, match=r"'model\.norm\.weight' has shape \(7,\) but 'norm\.weight' expects \(64,\)"):
        fg.pipeline(str(ckpt), device="cpu")


def test_no_weights_and_broken_index(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(fg.WeightLoadError, match="no weights found.*load_format='dummy'"):
        fg.pipeline(str(ckpt), device="cpu")
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001.safetensors"}}))
    with pytest.raises(fg.WeightLoadError, match="shard files that are missing"):
        fg.pipeline(str(ckpt), device="cpu")


def test_dummy_weights_from_config_alone(ckpt):
    for f in ckpt.glob("*.safetensors"):
        f.unlink()
    pipe = fg.pipeline(str(ckpt), device="cpu", load_format="dummy")
    out = pipe([[1, 2, 3]], max_new_tokens=4, ignore_eos=True)[0]
    assert out.generated_length == 4
    w = pipe.engine.model.layers[0].self_attn.qkv_proj.weight
    assert 0.01 < w.std().item() < 0.03          # N(0, 0.02), not zeros or garbage
    assert torch.equal(pipe.engine.model.norm.weight, torch.ones(64))


def test_config_missing_a_key_the_family_needs_is_named(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    del cfg["intermediate_size"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(fg.ConfigError, match=r"lacks 'intermediate_size', which the 'llama' family \(fastgen-llama\)"):
        fg.pipeline(str(ckpt), device="cpu")
    cfg["intermediate_size"] = "big"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(fg.ConfigError, match="cannot build a model from these values"):
        fg.pipeline(str(ckpt), device="cpu")


# weight maps with a plugin author's mistakes, as a module the family names lazily
MAPS = '''
import dataclasses
from fastgen_core import WeightMap
from fastgen_llama.model import weight_map

def typo(c):
    wm = weight_map(c)
    return WeightMap([dataclasses.replace(r, target=r.target.replace("qkv_proj", "qkv_prj")) for r in wm.rules],
                     wm.ignore)

def rules_only(c):
    return weight_map(c).rules
'''


@pytest.fixture
def registry_with_weights(tmp_path, monkeypatch):
    """A registry whose one family is the Llama plugin's model with the weight map ``fgtest_maps:<name>``."""
    (tmp_path / "fgtest_maps.py").write_text(MAPS)
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(name):
        class Plugin:
            @fg.hookimpl
            def register_model_families(self, register):
                register(fg.ModelFamily(name="llama-test", architectures=("LlamaForCausalLM",),
                                        config="fastgen_llama.model:LlamaConfig",
                                        model="fastgen_llama.model:LlamaForCausalLM", weights=f"fgtest_maps:{name}"))
        ps = fg.get_plugin_set(autoload=False)
        ps.register(Plugin(), "llama-test")
        return fg.FamilyRegistry(ps)
    return make


def test_rule_target_the_model_lacks_names_family_rule_and_nearest_names(ckpt, registry_with_weights):
    with pytest.raises(fg.WeightLoadError) as e:
        fg.pipeline(str(ckpt), device="cpu", registry=registry_with_weights("typo"))
    msg = str(e.value)
    assert re.search(r"the 'llama-test' family's weight map rule 'model\.layers\.\{i\}\.self_attn\.(.)_proj\.weight' "
                     r"-> 'layers\.\{i\}\.self_attn\.qkv_prj\.weight' sends checkpoint tensor "
                     r"'model\.layers\.0\.self_attn\.\1_proj\.weight' to 'layers\.0\.self_attn\.qkv_prj\.weight'", msg), msg
    assert "nearest parameter names: ['layers.0.self_attn.qkv_proj.weight'" in msg, msg


def test_checkpoint_with_more_layers_than_config_says_so(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["num_hidden_layers"] = 1
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(fg.WeightLoadError, match=r"the 'llama' family's weight map rule .* to 'layers\.1\.[^']*', but .*; it "
                                                 r"has 1 like it \('layers\.0\.[^']*'\): the checkpoint has more layers or experts than config\.json describes"):
        fg.pipeline(str(ckpt), device="cpu")


def test_weights_callable_returning_a_list_says_what_to_return(ckpt, registry_with_weights):
    with pytest.raises(fg.WeightLoadError, match=r"the 'llama-test' family's weights 'fgtest_maps:rules_only' "
                                                 r"returned a list of \d+ Rule objects; a fastgen_core\.WeightMap is "
                                                 r"needed: wrap the rules: WeightMap\(rules, ignore=\[\.\.\.\]\)"):
        fg.pipeline(str(ckpt), device="cpu", registry=registry_with_weights("rules_only"))
