import json

import pytest
import torch
from transformers import PhiConfig

import fastgen_phi.plugin
from fastgen_core import UnsupportedModelError, pipeline
from fastgen_core.testing import check_family, check_registration, hf_greedy, hf_last_logits, random_prompts, save_tiny_model


def tiny_phi(**kw):
    # head_dim 20: factor 0.4 -> rotary_dim 8, factor 0.5 -> 10 (both even, as real Phi-2's 32 of 80).
    base = dict(hidden_size=80, num_attention_heads=4, intermediate_size=160, num_hidden_layers=2,
                vocab_size=128, max_position_embeddings=512)
    return PhiConfig(**{**base, **kw})


@pytest.mark.parametrize("factor", [0.4, 0.5])
def test_phi_partial_rotary_matches_transformers(tmp_path, factor):
    report = check_family(tiny_phi(partial_rotary_factor=factor), tmp_path, num_prompts=12,
                          init_std=0.1)
    assert report.preemptions > 0


def test_phi_qk_layernorm_and_tied_embeddings(tmp_path):
    check_family(tiny_phi(qk_layernorm=True, tie_word_embeddings=True, partial_rotary_factor=0.4), tmp_path,
                 num_prompts=12, budgets=(7, 64), init_std=0.1)


@pytest.mark.parametrize("qk_layernorm", [False, True])
def test_phi_biases_and_layernorms_load(tmp_path, qk_layernorm):
    """Random init leaves biases at 0 and LayerNorms at 1, where a swapped tensor goes unnoticed: randomise
    every 1-D parameter too, re-save, and compare."""
    ref = save_tiny_model(tiny_phi(partial_rotary_factor=0.4, qk_layernorm=qk_layernorm), tmp_path, init_std=0.1)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    ref.save_pretrained(tmp_path)
    prompts = random_prompts(12, ref.config.vocab_size, 1, 60, seed=2)
    pipe = pipeline(str(tmp_path), device="cpu", dtype="float32", kv_block_size=4, max_ragged_batch_size=16)
    outs = pipe(prompts, max_new_tokens=6, ignore_eos=True, return_logits=True)
    for p, o in zip(prompts, outs):
        assert o.token_ids == hf_greedy(ref, p, 6)
        assert (o.logits[0] - hf_last_logits(ref, p)).abs().max().item() <= 1e-4
    pipe.destroy()


def test_phi_family_is_registered():
    from fastgen_phi.model import PhiForCausalLM
    check_registration(fastgen_phi.plugin, "phi", ["PhiForCausalLM"], ["phi"], dist="fastgen-phi",
                       model_class=PhiForCausalLM)


def test_phi_odd_rotary_dim_is_refused(tmp_path):
    save_tiny_model(tiny_phi(), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_parameters"]["partial_rotary_factor"] = 0.25        # 0.25 * 20 = 5 channels: not even
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="rotary_dim 5"):
        pipeline(str(tmp_path), device="cpu", dtype="float32")


def test_phi_hub_config_with_top_level_rotary_factor():
    """microsoft/phi-2's config.json (pre transformers 5) keeps partial_rotary_factor at top level."""
    from fastgen_phi.model import PhiConfig as FastgenPhiConfig
    hub = {"architectures": ["PhiForCausalLM"], "model_type": "phi", "hidden_size": 2560, "intermediate_size": 10240,
           "num_attention_heads": 32, "num_hidden_layers": 32, "vocab_size": 51200, "partial_rotary_factor": 0.4,
           "rope_theta": 10000.0, "layer_norm_eps": 1e-5, "hidden_act": "gelu_new", "qk_layernorm": False,
           "max_position_embeddings": 2048, "tie_word_embeddings": False}
    c = FastgenPhiConfig.from_hf(hub)
    assert (c.head_dim, c.rotary_dim, c.num_key_value_heads) == (80, 32, 32)
