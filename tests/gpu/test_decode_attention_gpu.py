"""The fused decode-attention kernel (kernels/decode_attention.cu: rotary, the K/V write, split-K attention and
the merge in one launch) against its reference: attention against the float64 reference over what the
reference wrote, the cache writes against rotary_kv_write_ref's, on random decode-only batches of few
sequences (contexts to 6k, blocks 16/32, GQA, partial / full / no rotary, sliding windows), any split count,
and replayed from a CUDA graph with new contexts."""
import pytest
import torch

from attention_cases import random_case
from fastgen_core.layers import attention as A
from fastgen_core.layers import decode_attention as DA
from fastgen_core.layers.rotary import RotaryEmbedding, rotary_kv_write_ref

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SHAPES = [  # hq, hk, d, rotary_dim (0: none), block_size, sliding_window
    (32, 32, 80, 32, 32, None),     # Phi-2: partial rotary, head_dim 80
    (32, 32, 128, 128, 32, None),   # Llama-2-7B
    (32, 8, 128, 128, 16, None),    # GQA (Mixtral, Llama-3)
    (8, 2, 64, 64, 16, 50),         # Mistral-style sliding window
    (16, 4, 96, 48, 16, 33),        # head_dim 96, a window edge inside a tile
    (12, 12, 64, 0, 32, None),      # OPT: no rotary
]
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


class _Owner:
    """Stands in for the layer that keeps the merge's counters."""


def _case(shape, dtype, n, seed, max_ctx=6000):
    hq, hk, d, rot, bs, win = shape
    q, _, _, kc, vc, meta = random_case(n, [], hq, hk, d, bs, "cuda", dtype, seed=seed, max_ctx=max_ctx)
    g = torch.Generator().manual_seed(seed + 100)
    k = torch.randn(n, hk, d, generator=g).to("cuda", dtype)        # this step's K/V, not yet in the cache
    v = torch.randn(n, hk, d, generator=g).to("cuda", dtype)
    positions = meta.context_lens.index_select(0, meta.decode_seqs) - 1
    rotary = RotaryEmbedding(d, rot, 10000.0).cuda() if rot else None
    return q, k, v, positions, rotary, kc, vc, meta, win


def _reference(q, k, v, positions, rotary, kc, vc, meta, win):
    """(attention in float64 over what the reference wrote, the caches the reference wrote)."""
    kc, vc = kc.clone(), vc.clone()
    if rotary is not None:
        rotary.reset()        # its cos/sin memo keys on the positions tensor, which the graph test rewrites in place
    qr = rotary_kv_write_ref(q.clone(), k, v, positions, rotary, kc, vc, meta.slot_mapping)
    d = q.shape[-1]
    ref = A.paged_attention_ref(qr.double(), kc.double(), vc.double(), meta, d ** -0.5, win)
    return ref.reshape(q.shape[0], -1), kc, vc


def _err(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n,splits", [(1, None), (3, None), (2, 1), (2, 3), (1, 32)])
def test_fused_decode_matches_reference(shape, dtype, n, splits):
    for seed in range(2):
        q, k, v, pos, rotary, kc, vc, meta, win = _case(shape, dtype, n, seed)
        ref, kc_ref, vc_ref = _reference(q, k, v, pos, rotary, kc, vc, meta, win)
        out = DA.fused_decode_attention(q, k, v, pos, rotary, kc, vc, meta, q.shape[-1] ** -0.5, win, _Owner(),
                                        splits=splits)
        assert out is not None, "the fused kernel did not take a decode-only batch it fits"
        assert not out.isnan().any()
        assert _err(out, ref) < TOL[dtype], f"{shape} {dtype} n={n} splits={splits}"
        # the cache: V copied exactly; K rotated as rotary_kv_write_ref rotates it (cos/sin may differ from
        # torch's in the last place, so a few elements may too)
        assert torch.equal(vc, vc_ref)
        same = (kc == kc_ref).float().mean().item()
        assert same > 0.999 and _err(kc, kc_ref.double()) < TOL[dtype]


def test_fused_decode_in_a_graph_serves_new_contexts_and_leaves_counters_at_zero():
    shape = SHAPES[0]
    dtype = torch.bfloat16
    q, k, v, pos, rotary, kc, vc, meta, win = _case(shape, dtype, 2, seed=5)
    owner = _Owner()
    args = (q, k, v, pos, rotary, kc, vc, meta, shape[2] ** -0.5, win, owner)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        DA.fused_decode_attention(*args)          # compile and make the counters outside the capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = DA.fused_decode_attention(*args)
    assert out is not None
    for shrink in (1, 2, 3):                      # shorter contexts, same graph: new slots for the new token
        ctx = (meta.context_lens.clone() // shrink).clamp(min=1)
        meta.context_lens.copy_(ctx)
        tables = meta.block_tables
        bs = meta.block_size
        last = ctx - 1
        meta.slot_mapping.copy_(tables[torch.arange(len(ctx), device="cuda"), last // bs] * bs + last % bs)
        pos.copy_(last)
        ref, kc_ref, vc_ref = _reference(q, k, v, pos, rotary, kc, vc, meta, win)
        g.replay()
        torch.cuda.synchronize()
        assert _err(out, ref) < TOL[dtype]
        assert torch.equal(vc, vc_ref)
    assert int(owner._decode_counters.abs().sum()) == 0


def test_fused_decode_declines_what_it_does_not_take():
    q, k, v, pos, rotary, kc, vc, meta, win = _case(SHAPES[0], torch.bfloat16, 8, seed=1)
    scale = 80 ** -0.5
    assert DA.fused_decode_attention(q, k, v, pos, rotary, kc, vc, meta, scale, win, _Owner()) is None  # 8 x 32 heads
    q, kn, vn, kc, vc, meta = random_case(1, [(0, 20)], 32, 32, 80, 32, "cuda", torch.bfloat16)
    pos = torch.arange(21, device="cuda")
    assert DA.fused_decode_attention(q, kn, vn, pos, None, kc, vc, meta, scale, None, _Owner()) is None  # a prompt
    q, k, v, pos, rotary, kc, vc, meta, win = _case((71, 1, 64, 64, 16, None), torch.bfloat16, 1, seed=1)
    assert DA.fused_decode_attention(q, k, v, pos, rotary, kc, vc, meta, scale, win, _Owner()) is None  # G = 71


def test_layers_take_the_fused_kernel_for_small_decode_batches_only_when_opted_in(monkeypatch):
    """Where the plan keeps fused_rotary_decode (an opt-in kernel of decode_attention), RotaryAttention goes
    through the fused kernel for a decode-only step of few sequences; under "auto", never."""
    from fastgen_core import kernels
    from fastgen_core.layers import transformer
    from fastgen_core.layers.attention import ForwardContext
    calls = []
    real = DA.fused_decode_attention

    def spy(*a, **kw):
        out = real(*a, **kw)
        calls.append(out is not None)
        return out
    monkeypatch.setattr(transformer, "fused_decode_attention", spy)
    attn = transformer.RotaryAttention(256, 4, 4, 64, 0, RotaryEmbedding(64, 32)).cuda().to(torch.bfloat16)
    q, _, _, kc, vc, meta = random_case(2, [], 4, 4, 64, 16, "cuda", torch.bfloat16, seed=3)
    x = torch.randn(2, 256, device="cuda", dtype=torch.bfloat16)
    ctx = ForwardContext(positions=meta.context_lens - 1, attn=meta, kv_caches=[(kc, vc)])
    for setting, want in (("auto", []), ({"decode_attention": "fused_rotary_decode"}, [True])):
        calls.clear()
        with kernels.plan_scope(setting):
            out = attn(x, ctx)
        assert calls == want and out.shape == (2, 256)
