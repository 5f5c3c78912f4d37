import pytest
import torch
from safetensors.torch import save_file
from transformers import MixtralConfig

import fastgen_mixtral.plugin
from fastgen_core import WeightLoadError, pipeline
from fastgen_core.testing import check_family, check_registration, hf_greedy, hf_last_logits, random_prompts, save_tiny_model


def tiny_mixtral(**kw):
    base = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                num_hidden_layers=2, vocab_size=128, max_position_embeddings=512, num_local_experts=4,
                num_experts_per_tok=2)
    return MixtralConfig(**{**base, **kw})


@pytest.mark.parametrize("experts,top_k", [(4, 1), (4, 2), (8, 1), (8, 2)])
def test_mixtral_matches_transformers(tmp_path, experts, top_k):
    report = check_family(tiny_mixtral(num_local_experts=experts, num_experts_per_tok=top_k), tmp_path,
                          num_prompts=12, init_std=0.1)
    assert report.preemptions > 0


def test_mixtral_sliding_window(tmp_path):
    # Prompts run up to 200 tokens, far past the 24-token window, so the window decides the attention.
    cfg = tiny_mixtral(num_local_experts=8, num_experts_per_tok=2, sliding_window=24, num_key_value_heads=1)
    check_family(cfg, tmp_path, num_prompts=12, init_std=0.1)


def test_mixtral_family_is_registered():
    from fastgen_mixtral.model import MixtralForCausalLM
    check_registration(fastgen_mixtral.plugin, "mixtral", ["MixtralForCausalLM"], ["mixtral"], dist="fastgen-mixtral",
                       model_class=MixtralForCausalLM)


def _per_expert_hub_layout(state: dict, cfg) -> dict:
    """transformers 5 stacked experts -> the hub's one-tensor-per-expert w1/w3/w2 layout."""
    out, inter = {}, cfg.intermediate_size
    for name, t in state.items():
        t = t.detach().contiguous()
        if ".mlp.experts.gate_up_proj" in name:
            prefix = name.replace(".mlp.experts.gate_up_proj", ".block_sparse_moe.experts.")
            for e in range(t.shape[0]):
                out[f"{prefix}{e}.w1.weight"] = t[e, :inter].clone()
                out[f"{prefix}{e}.w3.weight"] = t[e, inter:].clone()
        elif ".mlp.experts.down_proj" in name:
            prefix = name.replace(".mlp.experts.down_proj", ".block_sparse_moe.experts.")
            for e in range(t.shape[0]):
                out[f"{prefix}{e}.w2.weight"] = t[e].clone()
        else:
            out[name.replace(".mlp.gate.", ".block_sparse_moe.gate.")] = t.clone()
    return out


def _stacked_layout(state: dict, cfg) -> dict:
    return {name: t.detach().contiguous().clone() for name, t in state.items()}


@pytest.mark.parametrize("layout", [_per_expert_hub_layout, _stacked_layout])
def test_mixtral_weight_layouts_load(tmp_path, layout):
    """Checkpoints written by hand in the hub per-expert layout and in the stacked transformers-5 layout."""
    cfg = tiny_mixtral(num_local_experts=4, num_experts_per_tok=2)
    ref = save_tiny_model(cfg, tmp_path, init_std=0.1)        # config.json (and a checkpoint we replace)
    with torch.no_grad():       # RMSNorm weights start at 1, where swapping two of them would go unnoticed
        for p in ref.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    tensors = layout(ref.state_dict(), cfg)
    if layout is _per_expert_hub_layout:
        assert "model.layers.1.block_sparse_moe.experts.3.w3.weight" in tensors
        assert not any("gate_up_proj" in n for n in tensors)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    prompts = random_prompts(12, cfg.vocab_size, 1, 60, seed=1)
    pipe = pipeline(str(tmp_path), device="cpu", dtype="float32", kv_block_size=4, max_ragged_batch_size=64)
    outs = pipe(prompts, max_new_tokens=6, ignore_eos=True, return_logits=True)
    for p, o in zip(prompts, outs):
        assert o.token_ids == hf_greedy(ref, p, 6)
        assert (o.logits[0] - hf_last_logits(ref, p)).abs().max().item() <= 1e-4
    pipe.destroy()


def test_mixtral_missing_expert_tensor_is_named(tmp_path):
    cfg = tiny_mixtral(num_local_experts=4, num_experts_per_tok=2, num_hidden_layers=1)
    ref = save_tiny_model(cfg, tmp_path)
    tensors = _per_expert_hub_layout(ref.state_dict(), cfg)
    del tensors["model.layers.0.block_sparse_moe.experts.2.w3.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightLoadError, match=r"layers\.0\.mlp\.experts\.gate_up_proj.*experts\.2\.w3"):
        pipeline(str(tmp_path), device="cpu", dtype="float32")
