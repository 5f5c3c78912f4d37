"""The shared building blocks families compose: rotary settings read as transformers reads them, LayerNorm,
the parallel-residual and pre-norm blocks, and the per-head QKV reordering (fastgen_core.layers)."""
import pytest
import torch
import transformers as t

from fastgen_core import UnsupportedModelError
from fastgen_core.layers import (LayerNorm, ParallelDecoderLayer, Pending, PreNormDecoderLayer, RopeParams,
                                 rope_from_hf, settle, ungroup_qkv)

NEOX = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=1, intermediate_size=128, vocab_size=64)


@pytest.mark.parametrize("spelling", [
    dict(rotary_pct=0.5, rotary_emb_base=500),                         # Pythia / GPT-NeoX hub files
    dict(rotary_pct=1.0),
    dict(),                                                            # silent: transformers' 0.25 and 10000
    dict(rope_parameters={"rope_type": "default", "rope_theta": 123.0, "partial_rotary_factor": 0.5}),
])
def test_rope_from_hf_reads_gpt_neox_spellings_as_transformers_does(spelling):
    theirs = t.GPTNeoXConfig(**NEOX, **spelling).rope_parameters
    ours = rope_from_hf({**NEOX, **spelling}, partial_rotary_factor=0.25)
    assert (ours.theta, ours.partial_rotary_factor) == (theirs["rope_theta"], theirs["partial_rotary_factor"])
    assert ours.scaling is None


def test_rope_from_hf_reads_phi_and_llama_spellings():
    phi_hub = {"partial_rotary_factor": 0.4, "rope_theta": 20000.0}            # microsoft/phi-2 (top level)
    assert rope_from_hf(phi_hub) == RopeParams(20000.0, None, 0.4)
    phi5 = t.PhiConfig(partial_rotary_factor=0.4).to_dict()                     # transformers 5: rope_parameters
    assert rope_from_hf(phi5).partial_rotary_factor == 0.4
    llama3 = {"rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    r = rope_from_hf(llama3)
    assert (r.theta, r.scaling["rope_type"], r.partial_rotary_factor) == (5e5, "llama3", 1.0)


def test_rope_params_unpack_as_the_old_pair_and_check_rotary_dim():
    theta, scaling = rope_from_hf({"rope_theta": 1e6})       # what in-tree and outside callers wrote
    assert (theta, scaling) == (1e6, None)
    assert RopeParams(1e4, None, 0.25).rotary_dim(256) == 64
    with pytest.raises(UnsupportedModelError, match=r"partial rotary factor 0\.25 x head_dim 20 gives rotary_dim 5"):
        RopeParams(1e4, None, 0.25).rotary_dim(20)


def test_layer_norm_is_torch_layer_norm_with_bias():
    torch.manual_seed(0)
    ours, ref = LayerNorm(32, 1e-5), torch.nn.LayerNorm(32, eps=1e-5)
    with torch.no_grad():
        for p in (ours.weight, ours.bias):
            p.normal_()
    ref.load_state_dict(ours.state_dict())
    assert sorted(ours.state_dict()) == ["bias", "weight"]
    x, r = torch.randn(5, 32), torch.randn(5, 32)
    assert torch.equal(ours(x), ref(x))
    residual = r.clone()
    assert torch.equal(ours.add_and_norm(x, residual), ref(x + r)) and torch.equal(residual, r + x)


class _Attn(torch.nn.Linear):
    """A linear map in place of attention: the blocks only route and sum."""

    def forward(self, x, ctx):
        return super().forward(x)


@pytest.mark.parametrize("shared_norm", [True, False])
def test_parallel_block_sums_attention_mlp_and_residual(shared_norm):
    torch.manual_seed(0)
    attn, mlp = _Attn(16, 16), torch.nn.Linear(16, 16)
    ln1, ln2 = LayerNorm(16), LayerNorm(16)
    with torch.no_grad():
        ln2.weight.mul_(3.0)
    block = ParallelDecoderLayer(attn, mlp, ln1, None if shared_norm else ln2)
    x = torch.randn(4, 16)
    want = attn(ln1(x), None) + mlp((ln1 if shared_norm else ln2)(x)) + x
    out = block(x, None)
    assert isinstance(out, Pending) and torch.equal(out.x, x)       # the sum is left to the next norm
    summed, normed = settle(out, ln2)
    assert torch.equal(summed, want) and torch.equal(normed, ln2(want))
    # a second block takes the first one's Pending as its input: the same as taking the sum
    again = settle(block(out, None), ln1)[0]
    assert torch.equal(again, settle(block(want, None), ln1)[0])


def test_a_sharded_parallel_block_keeps_one_stream():
    """Tensor-parallel branches all-reduce, so a sharded parallel block never forks its MLP onto a second stream
    (every rank must issue its collectives in one order); an unsharded one may (on CUDA)."""
    from fastgen_core.layers import MLP
    from fastgen_core.layers.sharded import TPGroup
    two = TPGroup(rank=0, size=2)
    for tp, sharded in ((None, False), (two, True)):
        block = ParallelDecoderLayer(_Attn(16, 16), MLP(16, 32, tp=tp), LayerNorm(16))
        assert block.sharded is sharded
    assert ParallelDecoderLayer(_Attn(16, 16), torch.nn.Linear(16, 16), LayerNorm(16)).sharded is False


def test_pre_norm_block_takes_layer_norms():
    torch.manual_seed(0)
    attn, mlp, ln1, ln2 = _Attn(16, 16), torch.nn.Linear(16, 16), LayerNorm(16), LayerNorm(16)
    block = PreNormDecoderLayer(16, 1e-5, attn, mlp, ln1, ln2)
    x = torch.randn(4, 16)
    h = x + attn(ln1(x), None)
    want = h + mlp(ln2(h))
    summed, normed = settle(block(x.clone(), None), ln1)
    assert torch.equal(summed, want) and torch.equal(normed, ln1(want))
    assert torch.equal(settle(want, ln1)[1], ln1(want))               # a tensor is just normed
    assert block.input_layernorm is ln1 and block.post_attention_layernorm is ln2


def test_ungroup_qkv_matches_gpt_neox_per_head_split():
    """GPT-NeoX's query_key_value rows are [q_h, k_h, v_h] per head; transformers views the output as
    [heads, 3 * head_dim] and chunks it. ungroup_qkv with one query head per group gives [Q; K; V]."""
    heads, d = 4, 16
    attn = t.models.gpt_neox.modeling_gpt_neox.GPTNeoXAttention(t.GPTNeoXConfig(**NEOX), layer_idx=0)
    torch.manual_seed(0)
    w, b = attn.query_key_value.weight.detach(), torch.randn(3 * heads * d)
    x = torch.randn(5, 64)
    q_ref, k_ref, v_ref = (x @ w.T + b).view(5, heads, 3 * d).chunk(3, dim=-1)
    q, k, v = (x @ ungroup_qkv(w, heads, d).T + ungroup_qkv(b, heads, d)).split(heads * d, dim=-1)
    for ours, ref in ((q, q_ref), (k, k_ref), (v, v_ref)):
        torch.testing.assert_close(ours.view(5, heads, d), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="a fused QKV tensor of 100 rows cannot be 4 KV groups"):
        ungroup_qkv(torch.zeros(100, 8), heads, d)
