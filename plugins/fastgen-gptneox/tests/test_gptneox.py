"""GPT-NeoX against transformers: greedy tokens equal and first-token logits within 1e-4 (check_family,
check_family_tp) over each quirk: parallel and sequential residual, rotary_pct 0.25 and 1.0, tied and untied
embeddings, attention biases off, a sharded .bin checkpoint; and a Pythia config.json as the hub ships it
(rotary settings at the top level, old checkpoint buffers)."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPTNeoXConfig as HFGPTNeoXConfig

from fastgen_core import UnsupportedModelError, pipeline
from fastgen_core.testing import (check_family, check_family_tp, hf_greedy, hf_last_logits, random_prompts,
                                  save_tiny_model)
from fastgen_gptneox.model import GPTNeoXConfig


def tiny_neox(**kw):
    base = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128, vocab_size=128,
                max_position_embeddings=512)
    return HFGPTNeoXConfig(**{**base, **kw})


def test_pythia_layout_parallel_residual_quarter_rotary_untied(tmp_path):
    report = check_family(tiny_neox(use_parallel_residual=True, rotary_pct=0.25), tmp_path, num_prompts=12)
    assert report.preemptions > 0


def test_sequential_residual_full_rotary_tied_no_attention_bias_sharded_bin(tmp_path):
    cfg = tiny_neox(use_parallel_residual=False, rotary_pct=1.0, tie_word_embeddings=True, attention_bias=False)
    check_family(cfg, tmp_path, num_prompts=12, shards=2, safe=False)
    files = sorted(f.name for f in (tmp_path / "model-2-0").iterdir())
    assert "pytorch_model.bin.index.json" in files and not any(f.endswith(".safetensors") for f in files), files


def test_tensor_parallel_two_ranks(tmp_path):
    # the per-head fused QKV is reordered on the full tensor, then each rank takes its heads' rows
    check_family_tp(tiny_neox(rotary_pct=0.25), tmp_path, num_prompts=12)


def _as_hub_config(path, **top_level):
    """Rewrite config.json the way Pythia's hub files are: no rope_parameters, rotary keys at the top level."""
    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("rope_parameters", None)
    cfg.update(top_level)
    (path / "config.json").write_text(json.dumps(cfg))


def test_pythia_hub_config_json_and_old_checkpoint_buffers(tmp_path):
    """rotary_emb_base and rotary_pct at the top level reach the model (a base of 10000 instead, what the
    core read before, gives other logits), and the buffers older checkpoints saved are skipped."""
    ref = save_tiny_model(tiny_neox(rotary_pct=0.5, rotary_emb_base=100), tmp_path, init_std=0.1)
    _as_hub_config(tmp_path, rotary_pct=0.5, rotary_emb_base=100)
    state = load_file(str(tmp_path / "model.safetensors"))
    for i in range(2):      # what transformers 4.3x saved with each Pythia layer
        state[f"gpt_neox.layers.{i}.attention.bias"] = torch.tril(torch.ones(512, 512, dtype=torch.bool))[None, None]
        state[f"gpt_neox.layers.{i}.attention.masked_bias"] = torch.tensor(-1e9)
        state[f"gpt_neox.layers.{i}.attention.rotary_emb.inv_freq"] = torch.ones(4)
    save_file(state, str(tmp_path / "model.safetensors"))
    prompts = random_prompts(6, 128, 20, 120, seed=3)
    pipe = pipeline(str(tmp_path), device="cpu", dtype="float32", kv_block_size=4, max_ragged_batch_size=32)
    c = pipe.engine.model_config
    assert (c.rope_theta, c.rotary_dim) == (100.0, 8)
    outs = pipe(prompts, max_new_tokens=6, ignore_eos=True, return_logits=True)
    pipe.destroy()
    for p, o in zip(prompts, outs):
        assert o.token_ids == hf_greedy(ref, p, 6)
        assert (o.logits[0] - hf_last_logits(ref, p)).abs().max().item() <= 1e-4

    _as_hub_config(tmp_path, rotary_emb_base=10000)
    pipe = pipeline(str(tmp_path), device="cpu", dtype="float32", kv_block_size=4, max_ragged_batch_size=32)
    wrong = pipe(prompts, max_new_tokens=1, ignore_eos=True, return_logits=True)
    pipe.destroy()
    assert max((o.logits[0] - w.logits[0]).abs().max().item() for o, w in zip(outs, wrong)) > 1e-3


HUB = {   # EleutherAI/pythia-1b's config.json and GPT-NeoX-20B's, as published
    "pythia-1b": {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": 2048,
                  "intermediate_size": 8192, "num_attention_heads": 8, "num_hidden_layers": 16, "vocab_size": 50304,
                  "max_position_embeddings": 2048, "rotary_pct": 0.25, "rotary_emb_base": 10000,
                  "use_parallel_residual": True, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
                  "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0, "torch_dtype": "float16"},
    "gpt-neox-20b": {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": 6144,
                     "intermediate_size": 24576, "num_attention_heads": 64, "num_hidden_layers": 44,
                     "vocab_size": 50432, "max_position_embeddings": 2048, "rotary_pct": 0.25,
                     "rotary_emb_base": 10000, "use_parallel_residual": True, "hidden_act": "gelu_fast",
                     "layer_norm_eps": 1e-5, "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0,
                     "torch_dtype": "float16"},
}


@pytest.mark.parametrize("name", sorted(HUB))
def test_hub_configs_read_as_transformers_reads_them(name):
    hf = HUB[name]
    ours, theirs = GPTNeoXConfig.from_hf(hf), HFGPTNeoXConfig(**hf)
    head_dim = theirs.hidden_size // theirs.num_attention_heads
    assert ours.head_dim == head_dim and ours.num_key_value_heads == theirs.num_attention_heads
    assert ours.rotary_dim == int(head_dim * theirs.rope_parameters["partial_rotary_factor"])
    assert ours.rope_theta == theirs.rope_parameters["rope_theta"]
    assert (ours.use_parallel_residual, ours.attention_bias, ours.tie_word_embeddings, ours.hidden_act) == \
        (theirs.use_parallel_residual, theirs.attention_bias, theirs.tie_word_embeddings, theirs.hidden_act)


def test_defaults_follow_transformers_when_config_json_is_silent():
    hf = {k: v for k, v in HUB["pythia-1b"].items() if k not in ("rotary_pct", "rotary_emb_base",
                                                                  "use_parallel_residual")}
    ours, theirs = GPTNeoXConfig.from_hf(hf), HFGPTNeoXConfig(**hf)
    assert ours.rotary_dim == int(ours.head_dim * theirs.rope_parameters["partial_rotary_factor"]) == 64
    assert ours.use_parallel_residual is theirs.use_parallel_residual is True


@pytest.mark.parametrize("overrides, message", [
    (dict(rotary_pct=0.005), r"rotary_dim 1; it must be a positive even number"),    # 0.005 x 256
    (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), r"unsupported rope scaling 'dynamic'"),
    (dict(hidden_act="gelu_pytorch_quick"), r"unsupported activation 'gelu_pytorch_quick'"),
    (dict(hidden_size=2050), r"hidden_size \(2050\) must be divisible by num_attention_heads \(8\)"),
])
def test_variants_the_core_cannot_run_are_refused_with_the_value(overrides, message):
    hf = {**HUB["pythia-1b"], **overrides}
    with pytest.raises(UnsupportedModelError, match=message):
        GPTNeoXConfig.from_hf(hf)

