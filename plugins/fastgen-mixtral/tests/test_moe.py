"""The shared MoE block (fastgen_core.layers.moe): grouped computation against the naive oracle."""
import pytest
import torch
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

from fastgen_core.layers import SparseMoE, get_activation, grouped_experts_ref, moe_dense_ref, route_topk


@pytest.mark.parametrize("use_grouped_mm", [True, False], ids=["grouped_mm", "loop"])
@pytest.mark.parametrize("tokens,experts,top_k", [(1, 4, 1), (37, 4, 2), (64, 8, 2), (5, 8, 8), (200, 16, 3)])
def test_grouped_experts_match_every_expert_reference(tokens, experts, top_k, use_grouped_mm):
    g = torch.Generator().manual_seed(tokens * 100 + experts * 10 + top_k)
    hidden, inter = 32, 48
    x = torch.randn(tokens, hidden, generator=g)
    gate_up = torch.randn(experts, 2 * inter, hidden, generator=g) * 0.2
    down = torch.randn(experts, hidden, inter, generator=g) * 0.2
    weights, ids = route_topk(torch.randn(tokens, experts, generator=g), top_k)
    act = get_activation("silu")
    got = grouped_experts_ref(x, gate_up, down, weights, ids, act, use_grouped_mm=use_grouped_mm)
    want = moe_dense_ref(x, gate_up, down, weights, ids, act)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_grouped_mm", [True, False], ids=["grouped_mm", "loop"])
def test_grouped_experts_skip_unrouted_experts(use_grouped_mm):
    """Experts no token was routed to are never computed: poison them with NaN and the result stays finite."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 16, generator=g)
    gate_up = torch.randn(6, 40, 16, generator=g)
    down = torch.randn(6, 16, 20, generator=g)
    ids = torch.tensor([[0, 2]] * 10)
    weights = torch.full((10, 2), 0.5)
    gate_up[[1, 3, 4, 5]] = float("nan")
    out = grouped_experts_ref(x, gate_up, down, weights, ids, get_activation("silu"), use_grouped_mm=use_grouped_mm)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, moe_dense_ref(x, gate_up.nan_to_num(), down, weights, ids,
                                                  get_activation("silu")))


def test_route_topk_renormalises_softmax_weights():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    w, ids = route_topk(logits, 2)
    assert ids.tolist() == [[0, 1]]
    torch.testing.assert_close(w, torch.tensor([[1 / (1 + torch.e ** -1), 1 - 1 / (1 + torch.e ** -1)]]))
    w_raw, _ = route_topk(logits, 2, renormalize=False)
    torch.testing.assert_close(w_raw, torch.softmax(logits, -1)[:, :2])


@pytest.mark.parametrize("top_k", [1, 2])
def test_sparse_moe_matches_transformers_block(top_k):
    cfg = MixtralConfig(hidden_size=32, intermediate_size=48, num_local_experts=4, num_experts_per_tok=top_k)
    torch.manual_seed(0)
    hf = MixtralSparseMoeBlock(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    ours = SparseMoE(32, 48, 4, top_k)
    with torch.no_grad():
        ours.gate.weight.copy_(hf.gate.weight)
        ours.experts.gate_up_proj.copy_(hf.experts.gate_up_proj)
        ours.experts.down_proj.copy_(hf.experts.down_proj)
    x = torch.randn(3, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x.view(-1, 32)), hf(x).view(-1, 32), rtol=1e-5, atol=1e-6)


def test_sparse_moe_rejects_bad_top_k():
    with pytest.raises(ValueError, match="num_experts_per_tok.*got 5"):
        SparseMoE(8, 8, 4, 5)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_sparse_moe_bf16_is_bit_identical_to_transformers(top_k):
    """In bf16 the k expert contributions of a token are weighted and summed in float32 and rounded once,
    as transformers' default experts are. Rounding each contribution to bf16 first (its eager loop's
    order) changed an ulp on most rows, which after a layer re-routed tokens and cost bf16 teacher-forced
    agreement on a 2-layer Mixtral about a point."""
    # grouped_mm is what from_pretrained picks by default; a bare block would run the eager loop
    cfg = MixtralConfig(hidden_size=64, intermediate_size=96, num_local_experts=8, num_experts_per_tok=top_k,
                        experts_implementation="grouped_mm")
    torch.manual_seed(1)
    hf = MixtralSparseMoeBlock(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    hf = hf.to(torch.bfloat16)
    ours = SparseMoE(64, 96, 8, top_k).to(torch.bfloat16)
    with torch.no_grad():
        ours.gate.weight.copy_(hf.gate.weight)
        ours.experts.gate_up_proj.copy_(hf.experts.gate_up_proj)
        ours.experts.down_proj.copy_(hf.experts.down_proj)
    x = torch.randn(5, 40, 64).to(torch.bfloat16)
    with torch.no_grad():
        got, want = ours(x.view(-1, 64)), hf(x).view(-1, 64)
    assert torch.equal(got, want), f"{(got != want).any(-1).float().mean():.1%} of rows differ"
