"""The decode GEMV (kernels/gemv.cu) against torch.nn.functional.linear: every instantiated configuration,
1 and 2 rows, bf16/fp16, with and without bias, shapes whose K is not a multiple of the warp's stride and whose N
is not a multiple of the rows per block; inside a CUDA graph; and the fallbacks of ``linear``."""
import pytest
import torch
import torch.nn.functional as F

from fastgen_core.layers import linear as L

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
pytest.importorskip("cupy", reason="CuPy is not installed")


def _close(y, x, w, b):
    ref = F.linear(x.double(), w.double(), None if b is None else b.double())
    err = (y.double() - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= 1e-2 * scale, (err, scale)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("n,k", [(7680, 2560), (2563, 10240), (37, 8), (130, 2568)])
@pytest.mark.parametrize("config", [(r, u, w, ks) for r, u, ks in L.CONFIGS for w in (4, 8)])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_matches_linear(dtype, m, n, k, config, bias):
    g = torch.Generator(device="cuda").manual_seed(m * n + k)
    x = torch.randn(m, k, device="cuda", dtype=dtype, generator=g)
    w = torch.randn(n, k, device="cuda", dtype=dtype, generator=g) / k ** 0.5
    b = torch.randn(n, device="cuda", dtype=dtype, generator=g) if bias else None
    assert L.gemv_fits(x, w, b) == (m == 1)
    y = L.gemv(x, w, b, config)
    torch.cuda.synchronize()
    assert y.shape == (m, n) and y.dtype == dtype
    _close(y, x, w, b)


def test_linear_takes_gemv_only_where_it_fits(monkeypatch):
    w = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1, 256, device="cuda", dtype=torch.bfloat16)
    assert L.gemv_fits(x, w, None)
    assert not L.gemv_fits(torch.randn(2, 256, device="cuda", dtype=torch.bfloat16), w, None)   # 2 rows: cuBLAS
    assert not L.gemv_fits(x.float(), w.float(), None)                                          # fp32: cuBLAS
    w_odd = torch.randn(512, 252, device="cuda", dtype=torch.bfloat16)
    assert not L.gemv_fits(x[:, :252], w_odd, None)                                             # K % 8 != 0
    from fastgen_core import kernels
    with kernels.plan_scope("reference"):
        assert not L.gemv_fits(x, w, None)
    with kernels.plan_scope({"linear": "gemv"}):          # the GEMV without the K split still fits
        assert L.gemv_fits(x, w, None) and L.gemv_config(512, 256)[3] == 1
    # a strided x (a row view of a wider buffer) is made contiguous first
    wide = torch.randn(1, 2, 256, device="cuda", dtype=torch.bfloat16)
    _close(L.linear(wide[:, 1], w), wide[:, 1], w, None)


def test_gemv_is_captured_in_a_cuda_graph():
    lin = L.Linear(2560, 7680, bias=True).to("cuda", torch.bfloat16)
    x = torch.randn(1, 2560, device="cuda", dtype=torch.bfloat16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        lin(x)                                   # compile outside the capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = lin(x)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    _close(y, x, lin.weight, lin.bias)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens,top_k", [(1, 2), (2, 2), (4, 2), (3, 1)])
@pytest.mark.parametrize("hidden,inter", [(4096, 14336), (256, 512)])
def test_expert_gemv_reads_each_pairs_own_expert(dtype, tokens, top_k, hidden, inter):
    from fastgen_core.layers import moe
    g = torch.Generator(device="cuda").manual_seed(tokens * 10 + top_k)
    experts = 8
    x = torch.randn(tokens, hidden, device="cuda", dtype=dtype, generator=g)
    gate_up = torch.randn(experts, 2 * inter, hidden, device="cuda", dtype=dtype, generator=g) / hidden ** 0.5
    down = torch.randn(experts, hidden, inter, device="cuda", dtype=dtype, generator=g) / inter ** 0.5
    weights, ids = moe.route_topk(torch.randn(tokens, experts, device="cuda", generator=g), top_k)
    assert L.expert_gemv_fits(x, gate_up)
    y = L.expert_gemv(x, gate_up, ids.reshape(-1), top_k)
    ref = L.expert_gemv_ref(x.double(), gate_up.double(), ids.reshape(-1), top_k)
    assert (y.double() - ref).abs().max().item() <= 1e-2 * ref.abs().max().item()
    got = moe.experts_gemv(x, gate_up, down, weights, ids, torch.nn.functional.silu)
    want = moe.grouped_experts_ref(x, gate_up, down, weights, ids, torch.nn.functional.silu, use_grouped_mm=False)
    assert (got.double() - want.double()).abs().max().item() <= 2e-2 * want.double().abs().max().item()


def test_moe_decode_layer_takes_expert_gemv_inside_a_cuda_graph():
    from fastgen_core.layers import moe
    torch.manual_seed(0)
    layer = moe.SparseMoE(512, 1024, 8, 2).to("cuda", torch.bfloat16)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(1, 512, device="cuda", dtype=torch.bfloat16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        layer(x)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = layer(x)
    for _ in range(3):                       # new inputs route to other experts; the graph follows them
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        w, ids = moe.route_topk(layer.gate(x), 2)
        want = moe.grouped_experts_ref(x, layer.experts.gate_up_proj, layer.experts.down_proj, w, ids,
                                       torch.nn.functional.silu)
        assert (y.double() - want.double()).abs().max().item() <= 2e-2 * want.double().abs().max().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k", [(10240, 2560), (37, 8), (130, 2568)])
@pytest.mark.parametrize("config", [(r, u, 4, ks) for r, u, ks in L.CONFIGS])
def test_phi_fc1_gelu_new_gemv_equals_fc1_then_gelu_new(dtype, n, k, config):
    """fastgen-phi's fc1 + gelu_new kernel (the core's gemv.cuh included from a plugin's source, with an
    epilogue): bit for bit the GEMV followed by the gelu_new kernel, and close to the float64 reference."""
    fp = pytest.importorskip("fastgen_phi.model")
    g = torch.Generator(device="cuda").manual_seed(n + k)
    x = torch.randn(1, k, device="cuda", dtype=dtype, generator=g)
    w = torch.randn(n, k, device="cuda", dtype=dtype, generator=g) / k ** 0.5
    b = torch.randn(n, device="cuda", dtype=dtype, generator=g)
    fused = L.gemv(x, w, b, config, source=fp.GELU_NEW_CU, prefix="gemv_gelu_new")
    two = fp.gelu_new(L.gemv(x, w, b, config))
    assert torch.equal(fused, two)
    ref = fp.gelu_new_ref(F.linear(x.double(), w.double(), b.double()))
    assert (fused.double() - ref).abs().max().item() <= 1e-2 * ref.abs().max().item()


def _kernels_launched(fn):
    """The CUDA kernels (not copies or memsets) one call of ``fn`` launches, by name."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
            and not e.name.startswith(("Memset", "Memcpy"))]


def test_gemm_gelu_new_is_the_tanh_gelu_of_fc1_in_one_kernel():
    """fastgen-phi's fc1 + gelu_new at more rows: cuBLASLt's GELU epilogue is gelu_new's tanh form (float32, where
    it differs from the erf form by more than the GEMM's error) and one kernel, no activation pass after it."""
    fp = pytest.importorskip("fastgen_phi.model")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(64, 256, device="cuda", generator=g)
    w = torch.randn(512, 256, device="cuda", generator=g) / 16
    b = torch.randn(512, device="cuda", generator=g)
    h = F.linear(x.double(), w.double(), b.double())
    got = fp.gemm_gelu_new(x, w, b).double()
    tanh_err = (got - fp.gelu_new_ref(h)).abs().max().item()
    erf_err = (got - F.gelu(h)).abs().max().item()
    assert tanh_err < 1e-4 < erf_err, (tanh_err, erf_err)
    for rows in (2, 128, 2048):
        xb = torch.randn(rows, 2560, device="cuda", dtype=torch.bfloat16, generator=g)
        wb = torch.randn(10240, 2560, device="cuda", dtype=torch.bfloat16, generator=g) / 2560 ** 0.5
        bb = torch.randn(10240, device="cuda", dtype=torch.bfloat16, generator=g)
        assert fp.gemm_gelu_fits(xb, wb, bb)
        names = _kernels_launched(lambda: fp.gemm_gelu_new(xb, wb, bb))
        assert len(names) == 1, names
        ref = fp.gelu_new_ref(F.linear(xb.double(), wb.double(), bb.double()))
        got = fp.gemm_gelu_new(xb, wb, bb).double()
        assert (got - ref).abs().max().item() <= 1e-2 * ref.abs().max().item()


@pytest.mark.parametrize("rows,kernel", [(1, "gemv_gelu_new"), (128, "gemm_gelu_new")])
def test_phi_mlp_takes_its_fused_fc1_gelu_new_in_a_graph_and_matches_the_unfused_path(rows, kernel, monkeypatch):
    """PhiMLP's fc1 + gelu_new as one kernel: at one row the GEMV with gelu_new as its epilogue (bit for bit fc1 then
    the gelu_new kernel), at 128 rows the GEMM with cuBLASLt's (within bf16's rounding of them); also inside a CUDA
    graph (a decode step); a plan without the kernel gives the unfused path."""
    fp = pytest.importorskip("fastgen_phi.model")
    from fastgen_core import kernels
    torch.manual_seed(0)
    mlp = fp.PhiMLP(2560, 10240, "gelu_new").to("cuda", torch.bfloat16)
    x = torch.randn(rows, 2560, device="cuda", dtype=torch.bfloat16)
    assert fp.fc1_gelu_new(x, mlp.fc1.weight, mlp.fc1.bias) is not None
    fused = mlp(x)
    graph_out = torch.empty_like(fused)
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        mlp(x)
        with torch.cuda.graph(g, stream=s):
            graph_out.copy_(mlp(x))
    torch.cuda.current_stream().wait_stream(s)
    g.replay()
    other = {"gemv_gelu_new": "gemm_gelu_new", "gemm_gelu_new": "gemv_gelu_new"}[kernel]
    plan = kernels.cuda_plan({"fc1_gelu_new": other}, extra_ops=fp.PhiForCausalLM.kernel_ops)
    with kernels.plan_scope(plan):
        assert fp.fc1_gelu_new(x, mlp.fc1.weight, mlp.fc1.bias) is None
        unfused = mlp(x)
    torch.cuda.synchronize()
    assert torch.equal(graph_out, fused)
    err = (fused.double() - unfused.double()).abs().max().item()
    if rows == 1:
        assert err == 0
    else:
        assert 0 < err <= 2e-2 * unfused.double().abs().max().item(), err


@pytest.mark.parametrize("n,k", [(2560, 2560), (2560, 10240), (4096, 4096), (4096, 11008), (12288, 4096), (7680, 2560)])
def test_linear_with_the_default_config_matches(n, k):
    """``linear`` at one row takes ``gemv_config``'s choice (K split over 1, 2 or 4 warps by shape)."""
    g = torch.Generator(device="cuda").manual_seed(n ^ k)
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16, generator=g)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g) / k ** 0.5
    b = torch.randn(n, device="cuda", dtype=torch.bfloat16, generator=g)
    assert L.gemv_config(n, k)[3] in (1, 2, 4)
    _close(L.linear(x, w, b), x, w, b)
