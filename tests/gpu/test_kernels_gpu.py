"""CuPy kernels against their pure-torch references on random inputs (fp32, bf16, fp16), inside a CUDA graph,
and end to end: with the kernels on (the default plan), float32 greedy tokens still equal transformers' (Llama, Phi).
``switches(name)`` (conftest.py) leaves one kernel out of the plan, for the other form of an operation."""
import pytest
import torch

from fastgen_core import kernels

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
pytest.importorskip("cupy", reason="CuPy is not installed")

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("rows,hidden", [(1, 64), (7, 2560), (300, 4096), (5, 5120), (3, 100), (2048, 8192)])
@pytest.mark.parametrize("form", ["vector", "scalar"])
def test_rms_norm_and_fused_residual_match_the_reference(dtype, rows, hidden, form, switches):
    """Vector form (one 16-byte vector per thread: the default where the rows allow) and scalar form."""
    if form == "scalar":
        switches("rms_norm_vec")
    g = torch.Generator(device="cuda").manual_seed(rows * hidden)
    x = torch.randn(rows, hidden, device="cuda", generator=g).to(dtype)
    res = torch.randn(rows, hidden, device="cuda", generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(hidden, device="cuda", generator=g)).to(dtype)
    assert kernels.use(x)
    torch.testing.assert_close(kernels.rms_norm(x, w, 1e-6), kernels.rms_norm_ref(x, w, 1e-6),
                               rtol=TOL[dtype], atol=TOL[dtype])
    r1, r2 = res.clone(), res.clone()
    got, want = kernels.rms_norm(x, w, 1e-5, r1), kernels.rms_norm_ref(x, w, 1e-5, r2)
    assert torch.equal(r1, r2)                               # the residual stream: x + residual, exactly
    torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("rows,inter", [(1, 11008), (33, 128), (2048, 1408), (5, 100)])
@pytest.mark.parametrize("form", ["vector", "scalar"])
def test_silu_and_mul_matches_the_reference(dtype, rows, inter, form, switches):
    """torch's silu calls the accurate expf, as the kernel does: the same bits (but for the division's and
    expf's implementations, which are the same CUDA library functions)."""
    if form == "scalar":
        switches("silu_and_mul_vec")
    x = (3 * torch.randn(rows, 2 * inter, device="cuda")).to(dtype)
    assert _same_bits_share(kernels.silu_and_mul(x), kernels.silu_and_mul_ref(x)) > 0.9999
    torch.testing.assert_close(kernels.silu_and_mul(x), kernels.silu_and_mul_ref(x), rtol=TOL[dtype],
                               atol=TOL[dtype])


def _same_bits_share(a, b):
    return (a == b).float().mean().item()


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("shape", [(77, 10240), (3, 13), (2048, 10240)])
def test_phi_gelu_new_matches_the_reference_bit_for_bit(dtype, shape):
    """It rounds where transformers' formula rounds: the same bits but for tanhf's last place."""
    from fastgen_phi.model import gelu_new, gelu_new_ref
    x = (2 * torch.randn(*shape, device="cuda")).to(dtype)
    got, want = gelu_new(x), gelu_new_ref(x)
    torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype])
    assert _same_bits_share(got, want) > 0.999


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("t,k,hidden", [(1, 2, 4096), (2048, 2, 4096), (37, 2, 512), (50, 3, 256), (9, 2, 100)])
def test_moe_combine_matches_the_reference(dtype, t, k, hidden):
    """The MoE block's weighted sum of each token's k expert outputs (rows in expert-sorted order): the
    reference's bits for k = 2 (one float32 order of a two-term sum); hidden 100 in 16-bit types takes the
    reference itself."""
    g = torch.Generator(device="cuda").manual_seed(t * k + hidden)
    ys = torch.randn(t * k, hidden, device="cuda", generator=g).to(dtype)
    ids = torch.randint(0, 8, (t, k), device="cuda", generator=g)
    order = torch.argsort(ids.reshape(-1), stable=True)
    w = torch.softmax(torch.randn(t, k, device="cuda", generator=g), -1)
    got, want = kernels.moe_combine(ys, order, w), kernels.moe_combine_ref(ys, order, w)
    if k == 2:
        assert torch.equal(got, want)
    torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_phi_gelu_new_paired_has_the_bits_of_one_value_at_a_time(dtype, switches):
    """Every 16-bit pattern (NaNs aside): the paired form (__hmul2/__hadd2, the default) against the scalar
    form, which rounds in float32 where transformers' formula rounds."""
    from fastgen_phi.model import gelu_new
    x = torch.arange(-2 ** 15, 2 ** 15, dtype=torch.int32, device="cuda").to(torch.int16).view(dtype)
    x = x[~torch.isnan(x)].contiguous()
    paired = gelu_new(x)
    switches("gelu_new_paired")
    scalar = gelu_new(x)
    nan = torch.isnan(scalar)
    assert torch.equal(torch.isnan(paired), nan)
    differ = (paired.view(torch.int16) != scalar.view(torch.int16)) & ~nan
    assert not differ.any(), (f"{int(differ.sum())} inputs differ, e.g. x = {x[differ][:8].tolist()}: "
                              f"paired {paired[differ][:8].tolist()}, scalar {scalar[differ][:8].tolist()}")


def _rotary_case(dtype, hq, hk, d, rot, t, slots_total, max_position):
    """A random rotary + KV-write case: (rotary, qkv [t, (hq + 2 hk) d], positions, slots, k cache, v cache),
    the caches [slots_total / 16, 16, hk, d]."""
    from fastgen_core.layers.rotary import RotaryEmbedding
    rotary = RotaryEmbedding(d, rot, 10000.0).cuda() if rot else None
    qkv = torch.randn(t, (hq + 2 * hk) * d, device="cuda").to(dtype)
    positions = torch.randint(0, max_position, (t,), device="cuda")
    slots = torch.randperm(slots_total, device="cuda")[:t]
    k0, v0 = (torch.randn(slots_total // 16, 16, hk, d, device="cuda").to(dtype) for _ in range(2))
    return rotary, qkv, positions, slots, k0, v0


ROTARY_SHAPES = [(32, 32, 80, 32), (32, 8, 128, 128), (71, 1, 64, 64), (4, 4, 64, 0), (16, 2, 96, 48),
                 (8, 2, 64, 20)]


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("hq,hk,d,rot", ROTARY_SHAPES)
@pytest.mark.parametrize("form", ["vector", "scalar"])
def test_rotary_kv_write_matches_the_reference(dtype, hq, hk, d, rot, form, switches):
    """Rotation of q (in place, a view into the QKV output), of k on its way into the cache, v copied; the
    cache slots of other tokens untouched. rot 0: no rotary (OPT). Both kernel forms: 16-byte vectors (the
    default where every row piece is aligned: all shapes here but rot 20) and scalar."""
    from fastgen_core.layers.rotary import rotary_kv_write, rotary_kv_write_ref
    if form == "scalar":
        switches("rotary_kv_vec")
    t, blocks, bs = 300, 40, 16
    rotary, qkv, positions, slots, k0, v0 = _rotary_case(dtype, hq, hk, d, rot, t, blocks * bs, 4000)
    outs = []
    for fn in (rotary_kv_write, rotary_kv_write_ref):
        kc, vc = k0.clone(), v0.clone()
        q, k, v = qkv.clone().split([hq * d, hk * d, hk * d], dim=-1)
        outs.append((fn(q.view(t, hq, d), k.view(t, hk, d), v.view(t, hk, d), positions, rotary, kc, vc, slots),
                     kc, vc))
    (q1, k1, v1), (q2, k2, v2) = outs
    torch.testing.assert_close(q1, q2, rtol=TOL[dtype], atol=TOL[dtype])
    torch.testing.assert_close(k1, k2, rtol=TOL[dtype], atol=TOL[dtype])
    # it rounds where the reference rounds: the same bits but for cosf/sinf's last place
    assert _same_bits_share(q1, q2) > 0.999 and _same_bits_share(k1, k2) > 0.999
    assert torch.equal(v1, v2)
    untouched = torch.ones(blocks * bs, dtype=torch.bool, device="cuda")
    untouched[slots] = False
    assert torch.equal(k1.view(-1, hk, d)[untouched], k0.view(-1, hk, d)[untouched])


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("hq,hk,d,rot", ROTARY_SHAPES)
def test_rotary_kv_write_vector_form_has_the_scalar_forms_bits(dtype, hq, hk, d, rot, switches):
    from fastgen_core.layers.rotary import rotary_kv_vector_ok, rotary_kv_write
    t, blocks, bs = 257, 20, 16
    rotary, qkv, positions, slots, k0, v0 = _rotary_case(dtype, hq, hk, d, rot, t, blocks * bs, 8000)
    outs = []
    for off in ("", "rotary_kv_vec"):
        switches(off)
        kc, vc = k0.clone(), v0.clone()
        q, k, v = (x.view(t, -1, d) for x in qkv.clone().split([hq * d, hk * d, hk * d], dim=-1))
        if not off:     # all of these shapes are aligned throughout; rot 20 leaves half-vectors (10 channels)
            assert rotary_kv_vector_ok(q, k, v, kc, vc, rot) == (rot != 20)
        outs.append((rotary_kv_write(q, k, v, positions, rotary, kc, vc, slots), kc, vc))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,hidden", [(1, 2560), (7, 4544), (300, 2560), (3, 100), (2, 8192), (2048, 2560)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("form", ["vector", "scalar"])
def test_add3_layer_norm_matches_the_reference(dtype, rows, hidden, bias, form, switches):
    """Vector form (the default for hidden sizes of whole 16-byte vectors, any rows) and scalar form (up to 256
    rows; the reference beyond)."""
    if form == "scalar":
        switches("add3_layer_norm_vec")
    g = torch.Generator(device="cuda").manual_seed(rows * hidden)
    a, m, x = (torch.randn(rows, hidden, device="cuda", dtype=dtype, generator=g) * s for s in (1.0, 2.0, 4.0))
    w = torch.randn(hidden, device="cuda", dtype=dtype, generator=g)
    b = torch.randn(hidden, device="cuda", dtype=dtype, generator=g) if bias else None
    s1, n1 = kernels.add3_layer_norm(a, m, x, w, b, 1e-5)
    s2, n2 = kernels.add3_layer_norm_ref(a, m, x, w, b, 1e-5)
    assert torch.equal(s1, s2)                              # the sum rounds as torch's two adds do
    torch.testing.assert_close(n1, n2, rtol=TOL[dtype], atol=TOL[dtype])
    assert _same_bits_share(n1, n2) > 0.98                  # differs only through the statistics' last place


def test_kernels_are_captured_in_a_cuda_graph():
    x = torch.randn(16, 2560, device="cuda", dtype=torch.bfloat16)
    w = torch.ones(2560, device="cuda", dtype=torch.bfloat16)
    gu = torch.randn(16, 2 * 512, device="cuda", dtype=torch.bfloat16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        kernels.rms_norm(x, w, 1e-6), kernels.silu_and_mul(gu)     # compile outside the capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        a, b = kernels.rms_norm(x, w, 1e-6), kernels.silu_and_mul(gu)
    x.copy_(torch.randn_like(x))
    gu.copy_(torch.randn_like(gu))
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(a, kernels.rms_norm_ref(x, w, 1e-6), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(b, kernels.silu_and_mul_ref(gu), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("name", ["llama", "phi", "opt"])
def test_fp32_greedy_with_kernels_matches_transformers(name, tmp_path):
    import transformers as t

    from fastgen_core import pipeline
    from fastgen_core.testing import hf_greedy, random_prompts, save_tiny_model
    torch.backends.cuda.matmul.allow_tf32 = False
    if name == "llama":
        cfg = t.LlamaConfig(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=256, max_position_embeddings=512)
    elif name == "phi":
        cfg = t.PhiConfig(vocab_size=512, hidden_size=160, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=320, max_position_embeddings=512)
    else:
        cfg = t.OPTConfig(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                          ffn_dim=256, max_position_embeddings=512, word_embed_proj_dim=128)
    ref = save_tiny_model(cfg, tmp_path, init_std=0.05)
    prompts = random_prompts(24, 512, 1, 120, seed=3)
    want = [hf_greedy(ref, p, 12) for p in prompts]
    pipe = pipeline(str(tmp_path), device="cuda", dtype="float32", max_ragged_batch_size=128, kv_block_size=16)
    try:
        assert [o.token_ids for o in pipe(prompts, max_new_tokens=12, ignore_eos=True)] == want
    finally:
        pipe.destroy()
