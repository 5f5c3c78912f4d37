import json

import pytest
import torch
from transformers import FalconConfig

from fastgen_core import UnsupportedModelError, pipeline
from fastgen_core.testing import check_family, check_registration, hf_greedy, hf_last_logits, random_prompts, save_tiny_model


def tiny_falcon(**kw):
    base = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, vocab_size=128,
                max_position_embeddings=512)
    return FalconConfig(**{**base, **kw})


@pytest.mark.parametrize("bias", [False, True])
def test_falcon_7b_layout_multi_query_parallel(tmp_path, bias):
    report = check_family(tiny_falcon(multi_query=True, parallel_attn=True, bias=bias), tmp_path, num_prompts=12)
    assert report.preemptions > 0


def test_falcon_40b_layout_grouped_kv_two_norms(tmp_path):
    # 8 query heads over 2 KV heads: the grouped QKV rows must be reordered, or tokens diverge
    cfg = tiny_falcon(new_decoder_architecture=True, num_attention_heads=8, num_kv_heads=2)
    check_family(cfg, tmp_path, num_prompts=12)


def test_falcon_new_decoder_with_one_norm_untied(tmp_path):
    # num_ln_in_parallel_attn=1 (Falcon-11B style): one input_layernorm feeds both branches
    cfg = tiny_falcon(new_decoder_architecture=True, num_kv_heads=2, num_ln_in_parallel_attn=1,
                      tie_word_embeddings=False, bias=True)
    check_family(cfg, tmp_path, num_prompts=12)


def test_falcon_sequential_layout_multi_head(tmp_path):
    # parallel_attn=false: attention then MLP with post_attention_layernorm; multi_query=false: the old
    # per-head interleaved (q, k, v) rows
    cfg = tiny_falcon(parallel_attn=False, multi_query=False, bias=True)
    check_family(cfg, tmp_path, num_prompts=12)


LEGACY = {
    # Falcon-7B's original remote-code config: old key names, no new_decoder_architecture key
    "RefinedWebModel": (dict(multi_query=True, parallel_attn=True),
                        {"n_head": 4, "n_layer": 2, "hidden_size": 64, "multi_query": True, "parallel_attn": True}),
    # Falcon-40B's: "RefinedWeb" means the new decoder architecture; KV heads are n_head_kv
    "RefinedWeb": (dict(new_decoder_architecture=True, num_attention_heads=8, num_kv_heads=2),
                   {"n_head": 8, "n_head_kv": 2, "n_layer": 2, "n_embed": 64, "parallel_attn": True}),
}


@pytest.mark.parametrize("model_type", sorted(LEGACY))
def test_legacy_rw_config_loads_and_matches(tmp_path, model_type):
    falcon_kw, legacy = LEGACY[model_type]
    ref = save_tiny_model(tiny_falcon(**falcon_kw), tmp_path)
    config = {"architectures": ["RWForCausalLM"], "model_type": model_type, "vocab_size": 128, "bias": False,
              "alibi": False, "layer_norm_epsilon": 1e-5, "bos_token_id": 11, "eos_token_id": 11,
              "torch_dtype": "float32", **legacy}
    (tmp_path / "config.json").write_text(json.dumps(config))
    prompts = random_prompts(12, 128, 1, 120, seed=1)
    pipe = pipeline(str(tmp_path), device="cpu", dtype="float32", kv_block_size=4, max_ragged_batch_size=64)
    assert pipe.engine.family.family.name == "falcon"
    outs = pipe(prompts, max_new_tokens=6, ignore_eos=True, return_logits=True)
    for p, o in zip(prompts, outs):
        assert o.token_ids == hf_greedy(ref, p, 6)
        assert (o.logits[0] - hf_last_logits(ref, p)).abs().max().item() <= 1e-4
    pipe.destroy()


def test_alibi_fails_at_load_with_clear_message(tmp_path):
    cfg = tiny_falcon(alibi=True).to_dict()
    cfg["architectures"] = ["FalconForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="alibi: true"):
        pipeline(str(tmp_path), device="cpu", dtype="float32")


def test_legacy_alibi_is_refused_too():
    from fastgen_falcon.config import FalconConfig as Ours
    with pytest.raises(UnsupportedModelError, match="alibi"):
        Ours.from_hf({"model_type": "RefinedWebModel", "n_head": 32, "n_layer": 24, "hidden_size": 2048,
                      "vocab_size": 50304, "alibi": True, "multi_query": False, "parallel_attn": False})


@pytest.mark.parametrize("overrides, message", [
    (dict(new_decoder_architecture=True, parallel_attn=False), "parallel_attn: false"),
    (dict(num_ln_in_parallel_attn=2), "num_ln_in_parallel_attn: 2"),
    (dict(multi_query=False, num_kv_heads=2), "num_kv_heads=2"),
    (dict(new_decoder_architecture=True, num_kv_heads=3), "num_kv_heads"),
])
def test_layouts_transformers_cannot_run_are_refused(overrides, message):
    from fastgen_falcon.config import FalconConfig as Ours
    hf = tiny_falcon().to_dict()
    hf.update(overrides)
    with pytest.raises(UnsupportedModelError, match=message):
        Ours.from_hf(hf)


def split_heads_as_transformers(fused, new_arch: bool, heads: int, kv: int, d: int):
    """How transformers' Falcon reads a fused QKV projection (batch, seq, ...) into per-head Q, K, V (batch, seq,
    heads, d), K and V repeated over their groups: grouped [q..., k, v] per KV head in the new decoder architecture,
    interleaved [q, k, v] per head in the old one (multi_query False)."""
    b, s, _ = fused.shape
    if new_arch:
        qkv = fused.view(b, s, kv, heads // kv + 2, d)
        q, k, v = qkv[:, :, :, :-2], qkv[:, :, :, [-2]], qkv[:, :, :, [-1]]
        k, v = torch.broadcast_to(k, q.shape), torch.broadcast_to(v, q.shape)
        return [t.flatten(2, 3) for t in (q, k, v)]
    qkv = fused.view(b, s, heads, 3, d)
    return qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]


def test_split_heads_as_transformers_is_what_transformers_falcon_computes():
    """The test's copy of transformers' QKV split gives transformers' attention output on a tiny layer (public
    behaviour: FalconAttention's forward), so the comparison below is against what transformers does."""
    from transformers.models.falcon.modeling_falcon import FalconAttention, FalconRotaryEmbedding
    for new_arch, heads, kv in [(True, 8, 2), (False, 4, 4)]:
        cfg = tiny_falcon(new_decoder_architecture=new_arch, multi_query=False, num_attention_heads=heads,
                          num_kv_heads=kv, bias=True, attn_implementation="eager")
        torch.manual_seed(0)
        attn = FalconAttention(cfg, layer_idx=0).eval()
        d = 64 // heads
        x = torch.randn(1, 5, 64)
        pos = torch.arange(5)[None]
        cos, sin = FalconRotaryEmbedding(cfg)(x, pos)
        mask = torch.full((5, 5), float("-inf")).triu(1)[None, None]
        with torch.no_grad():
            out = attn(x, alibi=None, attention_mask=mask, position_ids=pos, position_embeddings=(cos, sin))[0]
            q, k, v = split_heads_as_transformers(attn.query_key_value(x), new_arch, heads, kv, d)
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))            # (b, heads, s, d)
            c, s_ = cos[:, None], sin[:, None]

            def rot(t):
                return t * c + torch.cat([-t[..., d // 2:], t[..., :d // 2]], -1) * s_
            q, k = rot(q), rot(k)
            p = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5 + mask, -1)
            mine = attn.dense((p @ v).transpose(1, 2).reshape(1, 5, 64))
        torch.testing.assert_close(mine, out, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("new_arch, heads, kv", [(True, 8, 2), (True, 4, 4), (False, 4, 4)])
def test_ungroup_qkv_matches_transformers_split(new_arch, heads, kv):
    # transformers splits a grouped fused projection its own way; ours slices [Q; K; V] after ungroup_qkv
    from transformers.models.falcon.modeling_falcon import FalconAttention
    from fastgen_core.layers import ungroup_qkv
    hf_cfg = tiny_falcon(new_decoder_architecture=new_arch, multi_query=False, num_attention_heads=heads,
                         num_kv_heads=kv, bias=True)
    attn = FalconAttention(hf_cfg, layer_idx=0)
    torch.manual_seed(0)
    w, b = attn.query_key_value.weight, attn.query_key_value.bias
    torch.nn.init.normal_(w)
    torch.nn.init.normal_(b)
    x = torch.randn(1, 5, 64)
    with torch.no_grad():
        q_ref, k_ref, v_ref = split_heads_as_transformers(attn.query_key_value(x), new_arch, heads, kv, 64 // heads)
        fused = x[0] @ ungroup_qkv(w, kv, 64 // heads).T + ungroup_qkv(b, kv, 64 // heads)
    d = 64 // heads
    q, k, v = fused.split([heads * d, kv * d, kv * d], dim=-1)
    k = k.view(5, kv, d).repeat_interleave(heads // kv, dim=1)     # what the shared attention does
    v = v.view(5, kv, d).repeat_interleave(heads // kv, dim=1)
    torch.testing.assert_close(q.view(5, heads, d), q_ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k, k_ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v, v_ref[0], rtol=1e-5, atol=1e-5)


def test_plugin_registers_architectures_and_model_types():
    import fastgen_falcon.plugin
    from fastgen_falcon.config import FalconConfig as Ours
    from fastgen_falcon.model import FalconForCausalLM
    check_registration(fastgen_falcon.plugin, "falcon", ["FalconForCausalLM", "RWForCausalLM"],
                       ["falcon", "RefinedWeb", "RefinedWebModel"], model_class=FalconForCausalLM, config_class=Ours)