"""Checkpoint loading errors name the offending tensor; dummy weights need only config.json."""
import json
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
