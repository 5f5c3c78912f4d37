"""The CUDA attention path (Triton paged decode and paged prefill, the SDPA fallback) against the float64
reference on random ragged batches: chunks that start mid-block, fresh prompts, contexts up to 8k, block
sizes 16/32, GQA / MQA, head_dim 64/80/96/128, sliding-window edges."""
import pytest
import torch

from attention_cases import random_case
from fastgen_core.layers import attention as A
from fastgen_core.layers import mha_decode, paged_decode, paged_prefill

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SHAPES = [  # hq, hk, d, block_size, sliding_window
    (32, 32, 80, 32, None),     # Phi-2: head_dim 80 is not a power of two
    (32, 8, 128, 32, None),     # Llama/Mixtral GQA
    (71, 1, 64, 16, None),      # Falcon-7B multi-query, odd head count
    (8, 2, 64, 16, 50),         # Mistral sliding window
    (16, 4, 96, 16, 33),        # head_dim 96, a window edge inside a tile
]
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def _err(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_path_matches_reference(shape, dtype):
    hq, hk, d, bs, win = shape
    for seed in range(3):
        q, kn, vn, kc, vc, meta = random_case(9, [(0, 37), (70, 21), (45, 130)], hq, hk, d, bs, "cuda", dtype,
                                              seed=seed)
        ref = A.paged_attention_ref(q.double(), kc.double(), vc.double(), meta, d ** -0.5, win)
        out = A.paged_attention_cuda(q, kc, vc, meta, d ** -0.5, win)
        assert not out.isnan().any(), "an output row was never written"
        assert _err(out, ref) < TOL[dtype], f"{shape} {dtype}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(32, 32, 80, 32, None), (32, 8, 128, 16, None), (32, 8, 128, 32, 4096)])
def test_prefill_kernel_long_contexts(shape, dtype):
    """Chunks of 2k tokens against contexts up to 8k (a long prompt's later chunks), fresh 2k prompts."""
    hq, hk, d, bs, win = shape
    q, _, _, kc, vc, meta = random_case(0, [(6144, 2048), (0, 2048), (4000, 1000), (3001, 1)], hq, hk, d, bs,
                                        "cuda", dtype, seed=11)
    ref = A.paged_attention_ref(q.double(), kc.double(), vc.double(), meta, d ** -0.5, win)
    out = torch.full_like(q, float("nan"))
    paged_prefill.paged_prefill(q, kc, vc, meta, d ** -0.5, win, out)
    rows = torch.cat([torch.arange(s, s + n) for s, n in zip(meta.query_start, meta.query_lens)
                      if n > 1]).cuda()
    assert not out[rows].isnan().any()
    assert _err(out[rows], ref[rows]) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_sdpa_fallback_matches_reference(dtype, monkeypatch):
    """prefill_attention=sdpa (the path without the Triton prefill kernel), and decode_attention=padded_sdpa."""
    from fastgen_core import kernels
    q, kn, vn, kc, vc, meta = random_case(4, [(0, 37), (70, 21)], 32, 8, 128, 32, "cuda", dtype)
    ref = A.paged_attention_ref(q.double(), kc.double(), vc.double(), meta, 0.1, None)
    with kernels.plan_scope({"prefill_attention": "sdpa", "decode_attention": "padded_sdpa"}):
        for new in ((kn, vn), (None, None)):
            out = A.paged_attention_cuda(q, kc, vc, meta, 0.1, None, *new)
            assert _err(out, ref) < 1e-2
    monkeypatch.setattr(paged_prefill, "available", lambda: False)      # no Triton: the same SDPA path
    out = A.paged_attention_cuda(q, kc, vc, meta, 0.1, None, kn, vn)
    assert _err(out, ref) < 1e-2
    with kernels.plan_scope("reference"):                                # the oracle itself, on CUDA
        assert _err(A.paged_attention_cuda(q, kc, vc, meta, 0.1, None), ref) < 1e-2


@pytest.mark.parametrize("read_back", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_exact_step_matches_reference(shape, dtype, read_back):
    """A plan that keeps exact_sdpa (Mixtral's): whole prompts through SDPA with this
    step's K/V (given, or read back from the cache as after the fused rotary kernel), the other chunks through
    the Triton kernel, decodes as always."""
    from fastgen_core import kernels
    hq, hk, d, bs, win = shape
    q, kn, vn, kc, vc, meta = random_case(9, [(0, 37), (70, 21), (0, 130)], hq, hk, d, bs, "cuda", dtype, seed=4)
    ref = A.paged_attention_ref(q.double(), kc.double(), vc.double(), meta, d ** -0.5, win)
    with kernels.plan_scope(kernels.default_plan((), ("exact_sdpa",))):
        out = A.paged_attention_cuda(q, kc, vc, meta, d ** -0.5, win, *(() if read_back else (kn, vn)))
    assert not out.isnan().any(), "an output row was never written"
    assert _err(out, ref) < TOL[dtype], f"{shape} {dtype}"


def test_triton_kernels_are_used():
    assert paged_decode.available(), "Triton paged decode did not load: the slow torch decode path is in use"
    assert paged_prefill.available(), "Triton paged prefill did not load: prompt chunks go through SDPA"


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_torch_fallback_matches_reference(dtype):
    q, kn, vn, kc, vc, meta = random_case(9, [(0, 37)], 32, 8, 128, 32, "cuda", dtype)
    ref = A.paged_attention_ref(q.double(), kc.double(), vc.double(), meta, 0.1, None)
    out = torch.full_like(q, float("nan"))
    A._decode_torch(q, kc, vc, meta, out, 0.1, None)
    rows = meta.decode_rows
    assert _err(out[rows], ref[rows]) < 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("splits", [1, 2, 16])
def test_split_decode_matches_reference(shape, dtype, splits):
    """Flash-decoding: a few sequences' contexts (up to 6k) whole or split into parts and merged by log-sum-exp."""
    hq, hk, d, bs, win = shape
    q, _, _, kc, vc, meta = random_case(3, [], hq, hk, d, bs, "cuda", dtype, seed=splits, max_ctx=6000)
    ref = A.paged_attention_ref(q.double(), kc.double(), vc.double(), meta, d ** -0.5, win)
    out = torch.full_like(q, float("nan"))
    paged_decode.paged_decode(q, kc, vc, meta, d ** -0.5, win, out, splits=splits)
    assert not out.isnan().any()
    assert _err(out, ref) < TOL[dtype]


def test_split_decode_is_chosen_for_few_sequences_and_replays_in_a_graph():
    assert paged_decode.num_splits(32) == 8 and paged_decode.num_splits(1) == 16
    assert paged_decode.num_splits(4096) == 1
    q, _, _, kc, vc, meta = random_case(1, [], 32, 32, 80, 32, "cuda", torch.bfloat16, seed=2, max_ctx=3000)
    assert meta.context_lens_host[0] > 1000
    out = torch.empty_like(q)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        paged_decode.paged_decode(q, kc, vc, meta, 0.1, None, out)     # compile outside the capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        paged_decode.paged_decode(q, kc, vc, meta, 0.1, None, out)
    meta.context_lens.fill_(meta.context_lens_host[0] // 2)      # a shorter context, same graph
    g.replay()
    torch.cuda.synchronize()
    ref = A.paged_attention_ref(q.double(), kc.double(), vc.double(), meta, 0.1, None)
    assert _err(out, ref) < 1e-2


MHA_SHAPES = [  # hq = hk, d, block_size, sliding_window
    (32, 80, 32, None),         # Phi-2
    (32, 128, 16, None),        # Llama-2-7B
    (12, 64, 16, 50),           # a window edge inside the keys a block takes at a time
    (8, 96, 32, 33),
]


@pytest.mark.parametrize("form", mha_decode.FORMS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", MHA_SHAPES)
def test_mha_decode_matches_reference(shape, dtype, form):
    """The CUDA-core decode kernel: 40 sequences with contexts of 1 to 3k, then of 1 to 40 (shorter than the
    keys a block takes at a time; most end mid-block), each form it is compiled in."""
    h, d, bs, win = shape
    for max_ctx in (3000, 41):
        q, _, _, kc, vc, meta = random_case(40, [], h, h, d, bs, "cuda", dtype, seed=d + bs, max_ctx=max_ctx)
        ref = A.paged_attention_ref(q.double(), kc.double(), vc.double(), meta, d ** -0.5, win)
        out = torch.full_like(q, float("nan"))
        mha_decode.mha_decode(q, kc, vc, meta, d ** -0.5, win, out, form)
        assert not out.isnan().any(), "an output row was never written"
        assert _err(out, ref) < TOL[dtype], f"{shape} {dtype} {form} contexts up to {max_ctx}"


def test_many_decodes_without_gqa_take_the_mha_kernel_and_replay_in_a_graph():
    """A 16-sequence Phi-2 step (512 programs) goes through mha_decode (its kernel, not Triton's), and a graph
    captured once serves other context lengths."""
    q, _, _, kc, vc, meta = random_case(16, [], 32, 32, 80, 32, "cuda", torch.bfloat16, seed=5, max_ctx=2500)
    out = torch.empty_like(q)
    assert mha_decode.usable(q, kc, vc, meta, out)
    assert not mha_decode.usable(q.float(), kc.float(), vc.float(), meta, out.float())
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        paged_decode.paged_decode(q, kc, vc, meta, 0.1, None, out)     # load the module outside the capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        paged_decode.paged_decode(q, kc, vc, meta, 0.1, None, out)
    for ctx in (meta.context_lens.clone(), meta.context_lens // 3 + 1):
        meta.context_lens.copy_(ctx)
        out.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        ref = A.paged_attention_ref(q.double(), kc.double(), vc.double(), meta, 0.1, None)
        assert _err(out, ref) < 1e-2
    triton_out = torch.empty_like(q)
    paged_decode.paged_decode(q, kc, vc, meta, 0.1, None, triton_out, config=paged_decode.tile_config(512, q.dtype))
    assert not torch.equal(out, triton_out), "both calls ran the same kernel"


@pytest.mark.parametrize("h, d", [(32, 80), (8, 128), (4, 64)])
def test_decode_grid_orders_give_the_same_bits(h, d):
    """Heads on the grid's first axis or its second: each block computes the same thing, in either kernel
    (the Triton kernel with and without context splits, and mha_decode where the heads allow)."""
    n = 300 // h + 1
    q, _, _, kc, vc, meta = random_case(n, [], h, h, d, 32, "cuda", torch.bfloat16, seed=h, max_ctx=2000)
    outs = {}
    for first in (False, True):
        for key, kw in {"triton": dict(config=paged_decode.tile_config(n * h, q.dtype)),
                        "triton split": dict(splits=4), "default": {}}.items():
            out = torch.full_like(q, float("nan"))
            paged_decode.paged_decode(q, kc, vc, meta, d ** -0.5, None, out, heads_first_grid=first, **kw)
            outs[key, first] = out
    for key in ("triton", "triton split", "default"):
        assert not outs[key, True].isnan().any()
        assert torch.equal(outs[key, True], outs[key, False]), key
