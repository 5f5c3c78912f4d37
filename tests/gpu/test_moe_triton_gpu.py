"""The Triton MoE expert GEMMs (layers/moe_triton.py) on the GPU against the grouped_mm path they replace at
decode-sized steps: Mixtral's expert shapes, inside a CUDA graph with routes that change between replays, and
through GroupedExperts (taken up to 16 rows an expert, unless the plan's moe_experts leaves it out)."""
import pytest
import torch
import torch.nn.functional as F

from fastgen_core import kernels
from fastgen_core.layers import moe, moe_triton

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
pytest.importorskip("triton", reason="Triton is not installed")


def _case(t, k, e, h, i, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(t, h, device="cuda", generator=g).to(dtype)
    gate_up = (torch.randn(e, 2 * i, h, device="cuda", generator=g) / h ** 0.5).to(dtype)
    down = (torch.randn(e, h, i, device="cuda", generator=g) / i ** 0.5).to(dtype)
    ids = torch.stack([torch.randperm(e, device="cuda", generator=g)[:k] for _ in range(t)])
    w = torch.softmax(torch.randn(t, k, device="cuda", generator=g), -1)
    return x, gate_up, down, w, ids


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t,k,e,h,i", [(1, 2, 8, 4096, 14336), (16, 2, 8, 4096, 14336), (64, 2, 8, 4096, 14336),
                                       (300, 2, 8, 512, 1024), (33, 1, 4, 256, 96), (7, 3, 16, 128, 80)])
def test_expert_gemms_match_the_grouped_path(dtype, t, k, e, h, i):
    x, gate_up, down, w, ids = _case(t, k, e, h, i, dtype)
    got = moe_triton.experts_triton(x, gate_up, down, w, ids, F.silu)
    want = moe.grouped_experts_ref(x, gate_up, down, w, ids, F.silu)
    assert got.shape == want.shape and not got.isnan().any()
    assert _rel(got, want) < (1e-2 if dtype == torch.bfloat16 else 2e-3)


def test_expert_gemms_replay_in_a_cuda_graph_with_new_routes():
    x, gate_up, down, w, ids = _case(64, 2, 8, 1024, 2048, torch.bfloat16)
    moe_triton.experts_triton(x, gate_up, down, w, ids, F.silu)            # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = moe_triton.experts_triton(x, gate_up, down, w, ids, F.silu)
    for seed in (1, 2):
        x2, _, _, w2, ids2 = _case(64, 2, 8, 1024, 2048, torch.bfloat16, seed)
        x.copy_(x2), w.copy_(w2), ids.copy_(ids2)
        graph.replay()
        torch.cuda.synchronize()
        assert _rel(out, moe.grouped_experts_ref(x, gate_up, down, w, ids, F.silu)) < 1e-2


def test_grouped_experts_take_the_triton_path_for_decode_sized_steps_unless_switched_off(monkeypatch):
    layer = moe.GroupedExperts(8, 512, 1024).cuda().to(torch.bfloat16)
    torch.nn.init.normal_(layer.gate_up_proj, std=0.05)
    torch.nn.init.normal_(layer.down_proj, std=0.05)
    calls = []
    real = moe_triton.experts_triton
    monkeypatch.setattr(moe_triton, "experts_triton", lambda *a: calls.append(1) or real(*a))
    x, _, _, w, ids = _case(40, 2, 8, 512, 1024, torch.bfloat16)          # 80 pairs <= 16 x 8 experts
    default = layer(x, w, ids)
    assert calls == [1]
    big = _case(65, 2, 8, 512, 1024, torch.bfloat16)                      # 130 pairs: grouped_mm
    layer(big[0], big[3], big[4])
    assert calls == [1]
    with kernels.plan_scope({"moe_experts": "reference"}):
        off = layer(x, w, ids)
    assert calls == [1] and _rel(default, off) < 1e-2
