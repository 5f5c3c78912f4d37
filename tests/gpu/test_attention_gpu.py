"""The CUDA attention path (Triton paged decode, SDPA prefill) against the pure-torch reference."""
import pytest
import torch

from attention_cases import random_case
from fastgen_core.layers import attention as A
from fastgen_core.layers import paged_decode

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SHAPES = [  # hq, hk, d, block_size, sliding_window
    (32, 32, 80, 32, None),     # Phi-2: head_dim 80 is not a power of two
    (32, 8, 128, 32, None),     # Llama/Mixtral GQA
    (71, 1, 64, 16, None),      # Falcon-7B multi-query, odd head count
    (8, 2, 64, 16, 50),         # Mistral sliding window
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_path_matches_reference(shape, dtype):
    hq, hk, d, bs, win = shape
    for seed in range(3):
        q, kn, vn, kc, vc, meta = random_case(9, [(0, 37), (70, 21)], hq, hk, d, bs, "cuda", dtype, seed=seed)
        ref = A.paged_attention_ref(q.double(), kc.double(), vc.double(), meta, d ** -0.5, win)
        out = A.paged_attention_cuda(q, kn, vn, kc, vc, meta, d ** -0.5, win)
        assert not out.isnan().any(), "an output row was never written"
        err = ((out.double() - ref).norm() / ref.norm()).item()
        assert err < (1e-5 if dtype == torch.float32 else 1e-2), f"{shape} {dtype}: relative error {err}"


def test_triton_kernel_is_used():
    assert paged_decode.available(), "Triton paged decode did not load: the slow torch decode path is in use"


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_torch_fallback_matches_reference(dtype):
    q, kn, vn, kc, vc, meta = random_case(9, [(0, 37)], 32, 8, 128, 32, "cuda", dtype)
    ref = A.paged_attention_ref(q.double(), kc.double(), vc.double(), meta, 0.1, None)
    out = torch.full_like(q, float("nan"))
    A._decode_torch(q, kc, vc, meta, out, 0.1, None)
    rows = meta.decode_rows
    err = ((out[rows].double() - ref[rows]).norm() / ref[rows].norm()).item()
    assert err < 1e-2
