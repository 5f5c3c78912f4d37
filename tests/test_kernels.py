"""The references (CPU): they are what the layers computed before the kernels existed, CPU never takes the kernel
path, and the kernel plan the engine opens decides which kernels a call site may take.
(The kernels themselves are compared with these references on a GPU: tests/gpu/test_kernels_gpu.py;
`make cu-check` compiles every .cu file.)"""
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastgen_core import kernels
from fastgen_core.layers import RMSNorm


def test_references_compute_what_the_layers_always_did():
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    res = torch.randn(5, 64, dtype=torch.bfloat16)
    norm = RMSNorm(64, 1e-6).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.mul_(torch.linspace(0.5, 1.5, 64, dtype=torch.bfloat16))
        h = x.float()
        want = norm.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)
        assert torch.equal(norm(x), want)
        stream = res.clone()
        out = norm.add_and_norm(x, stream)
        assert torch.equal(stream, res + x) and torch.equal(out, norm(res + x))
    gu = torch.randn(3, 10)
    assert torch.equal(kernels.silu_and_mul(gu), F.silu(gu[:, :5]) * gu[:, 5:])


def test_cpu_never_takes_the_kernel_path():
    assert not kernels.use(torch.zeros(3), "rms_norm")
    x = torch.randn(2, 8)
    assert torch.equal(kernels.rms_norm(x, torch.ones(8), 1e-6), kernels.rms_norm_ref(x, torch.ones(8), 1e-6))


def test_every_kernel_source_is_where_the_loaders_look():
    from fastgen_core.layers.decode_attention import DECODE_ATTENTION_CU
    from fastgen_core.layers.linear import GEMV_CU
    from fastgen_core.layers.rotary import ROTARY_KV_CU
    from fastgen_phi.model import GELU_NEW_CU
    assert kernels.core_source(kernels.FUSED_OPS_CU).is_file() and GELU_NEW_CU.is_file()
    assert kernels.core_source(ROTARY_KV_CU).is_file() and kernels.core_source(GEMV_CU).is_file()
    from fastgen_core.layers.mha_decode import MHA_DECODE_CU
    assert kernels.core_source(DECODE_ATTENTION_CU).is_file() and kernels.core_source(MHA_DECODE_CU).is_file()
    with pytest.raises(FileNotFoundError, match=r"'missing.cu' is not in .*\(installed: \['decode_attention.cu', "
                                                r"'fused_ops.cu', 'gemv.cu', 'mha_decode.cu', 'rotary_kv.cu'\]\)"):
        kernels.core_source("missing.cu")


def test_mha_decode_takes_many_sequences_without_gqa_in_16_bit_and_its_forms_are_compiled():
    from fastgen_core.layers import mha_decode as M
    bf16 = torch.bfloat16
    assert M.fits(32, 32, 80, bf16, 128 * 32) and M.fits(32, 32, 128, torch.float16, 256)
    assert not M.fits(32, 32, 80, bf16, 255)             # few sequences: the Triton kernel's context splits
    assert not M.fits(32, 32, 128, bf16, 512)            # head_dim 128 at many: Triton ties or wins
    assert M.fits(32, 32, 64, bf16, 4096) and not M.fits(32, 32, 96, bf16, 4096)     # 96: Triton won
    assert not M.fits(32, 8, 128, bf16, 4096)            # GQA: the tensor-core kernel shares each K/V row
    assert not M.fits(32, 32, 80, torch.float32, 4096)
    assert not M.fits(16, 16, 256, bf16, 4096)
    assert not M.usable(torch.zeros(300, 32, 80, dtype=bf16), torch.zeros(4, 32, 32, 80, dtype=bf16),
                        torch.zeros(4, 32, 32, 80, dtype=bf16), types.SimpleNamespace(decode_rows=torch.arange(300)),
                        torch.zeros(300, 32, 80, dtype=bf16))      # CPU tensors: never the kernel
    src = kernels.core_source(M.MHA_DECODE_CU).read_text()
    for lanes, unroll in M.FORMS:                         # every form the launcher may name is instantiated
        assert f"FASTGEN_MHA_DECODE_DIMS(T, suffix, {lanes}, {unroll})" in src
    assert all(f"FASTGEN_MHA_DECODE(T, suffix, {d}, LPK, U)" in src for d in M.HEAD_DIMS)
    with pytest.raises(ValueError, match=r"form \(3, 1\) is not compiled; allowed: "):
        M.mha_decode(None, None, None, None, 1.0, None, None, form=(3, 1))
    assert M.default_form() == (4, 4) and M.HEADS_FIRST


def test_rotary_kv_write_reference_is_the_unfused_path():
    """On CPU the fused op is its reference: rotary then the cache write, as RotaryAttention did before."""
    from fastgen_core.layers import RotaryEmbedding, write_kv_ref
    from fastgen_core.layers.rotary import rotary_kv_write
    t, hq, hk, d = 7, 4, 2, 16
    rot = RotaryEmbedding(d, 8, 500.0)
    qkv = torch.randn(t, (hq + 2 * hk) * d)
    q, k, v = (x.reshape(t, -1, d) for x in qkv.split([hq * d, hk * d, hk * d], -1))
    pos, slots = torch.tensor([0, 1, 2, 9, 10, 11, 40]), torch.tensor([3, 4, 5, 12, 13, 14, 0])
    kc, vc = torch.zeros(2, 8, hk, d), torch.zeros(2, 8, hk, d)
    got = rotary_kv_write(q, k, v, pos, rot, kc, vc, slots)
    wq, wk = rot(pos, q, k)
    kc2, vc2 = torch.zeros_like(kc), torch.zeros_like(vc)
    write_kv_ref(wk, v, kc2, vc2, slots)
    assert torch.equal(got, wq) and torch.equal(kc, kc2) and torch.equal(vc, vc2)


def test_a_cupy_without_external_stream_gets_torchs_stream_through_the_stream_protocol(monkeypatch):
    """CuPy 14 deprecates cupy.cuda.ExternalStream; where it is gone, kernels.launch hands CuPy torch's raw stream
    through Stream.from_external and the CUDA stream protocol."""
    import sys
    import types
    seen = []

    class Stream:
        @staticmethod
        def from_external(obj):
            seen.append(obj.__cuda_stream__())
            return "wrapped"
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(Stream=Stream))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    kernels._external_stream.cache_clear()
    try:
        assert kernels._external_stream(0xABC, 0) == "wrapped"
        assert seen == [(0, 0xABC)]
    finally:
        kernels._external_stream.cache_clear()


def test_rotary_kv_takes_16_byte_vectors_only_where_every_row_piece_is_aligned():
    """rotary_kv.cu's vector form needs head_dim, rot / 2 and the rows' strides in whole 16-byte vectors and
    every pointer aligned; anything else takes the scalar form."""
    from fastgen_core.layers.rotary import rotary_kv_vector_ok
    def parts(dtype, hq, hk, d, offset=0):
        qkv = torch.zeros(5 * (hq + 2 * hk) * d + offset, dtype=dtype)[offset:].view(5, -1)
        q, k, v = (x.view(5, -1, d) for x in qkv.split([hq * d, hk * d, hk * d], -1))
        return q, k, v, torch.zeros(4, 8, hk, d, dtype=dtype), torch.zeros(4, 8, hk, d, dtype=dtype)
    assert rotary_kv_vector_ok(*parts(torch.bfloat16, 32, 32, 80), 32)        # Phi-2: rot 32, half 16
    assert rotary_kv_vector_ok(*parts(torch.bfloat16, 71, 1, 64), 64)         # Falcon-7B, MQA
    assert rotary_kv_vector_ok(*parts(torch.bfloat16, 4, 4, 64), 0)           # OPT: no rotary
    assert not rotary_kv_vector_ok(*parts(torch.bfloat16, 8, 2, 64), 20)      # half 10: not whole vectors
    assert rotary_kv_vector_ok(*parts(torch.float32, 8, 2, 64), 24)           # float32: 4 to a vector
    assert not rotary_kv_vector_ok(*parts(torch.bfloat16, 8, 2, 68), 68)      # head_dim 68: rows misaligned
    assert not rotary_kv_vector_ok(*parts(torch.bfloat16, 8, 2, 64, offset=1), 64)   # a pointer off by 2 bytes


def test_an_install_without_the_packaged_sources_fails_only_when_a_kernel_runs_and_says_what_to_do(monkeypatch):
    kernels.kernel_dir.cache_clear()
    kernels.core_source.cache_clear()
    monkeypatch.setattr(kernels, "kernel_dirs", lambda: [Path("/nonexistent/_kernels")])
    try:
        with pytest.raises(FileNotFoundError, match=r"not installed \(looked in /nonexistent/_kernels\); reinstall"):
            kernels.core_source(kernels.FUSED_OPS_CU)
    finally:
        monkeypatch.undo()
        kernels.kernel_dir.cache_clear()
        kernels.core_source.cache_clear()
    assert kernels.core_source(kernels.FUSED_OPS_CU).is_file()


def test_core_linear_layers_are_gemv_capable_and_plain_linear_on_cpu():
    """Every linear layer the shared constructors build goes through layers.linear (the decode GEMV on CUDA);
    on CPU it is nn.Linear's own arithmetic, bit for bit."""
    from torch import nn

    from fastgen_core.layers import linear as L
    from fastgen_core.layers import sharded
    built = [sharded.column_linear(64, 96, [(0, 96)], bias=True), sharded.row_linear(64, 32, False, [(0, 64)]),
             sharded.vocab_linear(64, 100, bias=False)]
    assert all(type(m) is L.Linear for m in built)
    x = torch.randn(3, 64)
    for m in built:
        plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        plain.load_state_dict(m.state_dict())
        assert torch.equal(m(x), plain(x))
    assert not L.gemv_fits(x.bfloat16(), built[0].weight.bfloat16(), None)   # CPU tensors never take the kernel


def test_experts_gemv_glue_weights_and_sums_like_the_grouped_reference(monkeypatch):
    """The decode MoE path's own arithmetic (pairs, activation, float32 weighting and sum) on CPU, its GEMV
    swapped for that GEMV's torch reference (the kernel itself is tested against the same reference in
    tests/gpu/test_gemv_gpu.py)."""
    from fastgen_core.layers import linear as L
    from fastgen_core.layers import moe
    torch.manual_seed(0)
    monkeypatch.setattr(moe, "expert_gemv", L.expert_gemv_ref)
    x = torch.randn(3, 32)
    gate_up, down = torch.randn(6, 2 * 48, 32), torch.randn(6, 32, 48)
    for act in (torch.nn.functional.silu, torch.nn.functional.gelu):
        w, ids = moe.route_topk(torch.randn(3, 6), 2)
        got = moe.experts_gemv(x, gate_up, down, w, ids, act)
        want = moe.grouped_experts_ref(x, gate_up, down, w, ids, act, use_grouped_mm=False)
        torch.testing.assert_close(got, want, rtol=2e-5, atol=1e-5 * want.abs().max().item())
        torch.testing.assert_close(got, moe.moe_dense_ref(x, gate_up, down, w, ids, act),
                                   rtol=2e-5, atol=1e-5 * want.abs().max().item())
        # a wrong slot (both pairs of a token through its first expert) is caught
        monkeypatch.setattr(moe, "expert_gemv", lambda x_, wt, i, d: L.expert_gemv_ref(x_, wt, i.view(-1, 2)[:, :1]
                                                                                       .repeat(1, 2), d))
        bad = moe.experts_gemv(x, gate_up, down, w, ids, act)
        monkeypatch.setattr(moe, "expert_gemv", L.expert_gemv_ref)
        assert not torch.allclose(bad, want, rtol=1e-3)


def test_a_plan_decides_what_each_call_site_may_take(monkeypatch):
    """use(x, name) asks the active plan: every kernel under "auto" (opt-in ones aside), none under "reference",
    and an operation set to one kernel leaves its other kernels out while the rest stay as they were."""
    monkeypatch.setattr(kernels, "available", lambda: True)
    x = types.SimpleNamespace(is_cuda=True, dtype=torch.bfloat16)          # what use() reads of a CUDA tensor
    names = ("rms_norm", "rms_norm_vec", "rotary_kv", "silu_and_mul", "add3_layer_norm", "moe_combine", "gemv")
    assert all(kernels.use(x, n) for n in names) and not kernels.allows("fused_rotary_decode")
    with kernels.plan_scope("reference"):
        assert not any(kernels.use(x, n) for n in names) and not kernels.allows("paged_decode")
        with kernels.plan_scope({"rms_norm": "rms_norm", "decode_attention": "fused_rotary_decode"}):
            assert kernels.use(x, "rms_norm") and not kernels.use(x, "rms_norm_vec")
            assert kernels.allows("fused_rotary_decode") and not kernels.allows("paged_decode")
            assert kernels.use(x, "rotary_kv_vec") and kernels.allows("gemv_ksplit")      # the others: auto
        assert not kernels.use(x, "rms_norm")
    assert kernels.use(x, "rms_norm_vec")


def test_a_family_may_turn_on_an_opt_in_kernel_and_the_setting_overrides_it():
    """Mixtral turns on exact_sdpa (whole prompts as transformers attends them); other families do not; the
    setting's prefill_attention choice overrides either."""
    from fastgen_core.layers import CausalLM
    mixtral = pytest.importorskip("fastgen_mixtral.model").MixtralForCausalLM
    assert mixtral.family_kernels_on() == ("exact_sdpa",) and CausalLM.family_kernels_on() == ()

    def plan(setting, family_on):
        return kernels.KernelPlan.build(setting, "cuda", "bfloat16", have_cupy=True, have_triton=True,
                                        family_on=family_on)
    assert plan("auto", ("exact_sdpa",)).kept["prefill_attention"][0] == "exact_sdpa"
    assert "exact_sdpa" not in plan("auto", ()).kept["prefill_attention"]
    assert "exact_sdpa" not in plan({"prefill_attention": "paged_prefill"}, ("exact_sdpa",)).allowed
    assert plan({"prefill_attention": "exact_sdpa"}, ()).kept["prefill_attention"] == ("exact_sdpa", "reference")


def test_the_engine_opens_its_plan_around_every_forward(tiny_model_dir, monkeypatch):
    """The plan built from EngineConfig.kernels is the active one inside each step's forward and logits, and only
    there."""
    from fastgen_core import pipeline
    seen = []
    real = kernels.rms_norm
    monkeypatch.setattr(kernels, "rms_norm", lambda *a, **k: seen.append(kernels.active_plan()) or real(*a, **k))
    p = pipeline(str(tiny_model_dir[0]), device="cpu", kv_block_size=4, async_scheduling=False,
                 kernels={"rms_norm": "reference"})
    try:
        plan = p.engine.kernel_plan
        assert plan.setting == {"rms_norm": "reference"} and plan.kept["rms_norm"] == ("reference",)
        assert plan.device == "cpu" and all(names == ("reference",) for names in plan.kept.values())
        p.engine.add_request("hello world", kernels_test_params())
        while p.engine.has_unfinished():
            p.engine.step()
    finally:
        p.destroy()
    assert seen and all(got is plan for got in seen)
    assert kernels.active_plan() is not plan


def kernels_test_params():
    from fastgen_core import SamplingParams
    return SamplingParams(max_new_tokens=4, ignore_eos=True)
