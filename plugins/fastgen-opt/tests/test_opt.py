import json

import pytest
from safetensors.torch import load_file, save_file
from transformers import OPTConfig

from fastgen_core import UnsupportedModelError, WeightLoadError, pipeline
from fastgen_core.testing import check_family, check_registration, hf_greedy, random_prompts, save_tiny_model


def tiny_opt(**kw):
    base = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, ffn_dim=128, vocab_size=128,
                max_position_embeddings=512)
    return OPTConfig(**{**base, **kw})


def test_opt_pre_norm_matches_transformers(tmp_path):
    # OPT-125m's shape: pre-LayerNorm, final_layer_norm, no projections
    report = check_family(tiny_opt(), tmp_path, num_prompts=12)
    assert report.preemptions > 0


def test_opt_350m_layout_post_norm_with_projections(tmp_path):
    # OPT-350m's shape: post-LayerNorm (so no final_layer_norm), word embeddings narrower than the
    # hidden size with project_in / project_out
    check_family(tiny_opt(do_layer_norm_before=False, word_embed_proj_dim=32), tmp_path, num_prompts=12)


def test_opt_projections_no_bias_no_affine_no_final_norm_untied(tmp_path):
    cfg = tiny_opt(word_embed_proj_dim=48, enable_bias=False, layer_norm_elementwise_affine=False,
                   _remove_final_layer_norm=True, tie_word_embeddings=False)
    check_family(cfg, tmp_path, num_prompts=12)


def test_original_checkpoint_prefix_decoder_is_accepted(tmp_path):
    # facebook/opt-* checkpoints were saved from OPTModel: tensors start with "decoder.", not "model.decoder."
    ref = save_tiny_model(tiny_opt(do_layer_norm_before=False), tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    save_file({k.removeprefix("model."): v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    prompts = random_prompts(4, 128, 1, 60, seed=2)
    pipe = pipeline(str(tmp_path), device="cpu", dtype="float32", kv_block_size=4)
    outs = pipe(prompts, max_new_tokens=5, ignore_eos=True)
    assert [o.token_ids for o in outs] == [hf_greedy(ref, p, 5) for p in prompts]
    pipe.destroy()


def test_missing_projection_is_named(tmp_path):
    save_tiny_model(tiny_opt(word_embed_proj_dim=32), tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["model.decoder.project_in.weight"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightLoadError, match="project_in"):
        pipeline(str(tmp_path), device="cpu", dtype="float32")


def test_unknown_activation_is_refused(tmp_path):
    cfg = tiny_opt().to_dict()
    cfg.update(architectures=["OPTForCausalLM"], activation_function="mish")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="mish"):
        pipeline(str(tmp_path), device="cpu", dtype="float32")


def test_plugin_registers_architecture_and_model_type():
    import fastgen_opt.plugin
    from fastgen_opt.model import OPTConfig as Ours, OPTForCausalLM
    check_registration(fastgen_opt.plugin, "opt", ["OPTForCausalLM"], ["opt"], model_class=OPTForCausalLM,
                       config_class=Ours)