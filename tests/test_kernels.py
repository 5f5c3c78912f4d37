"""The kernel switch and the references (CPU): the references are what the layers computed before the
kernels existed, CPU never takes the kernel path, and a bad FASTGEN_KERNELS is refused by name.
(The kernels themselves are compared with these references on a GPU: tests/gpu/test_kernels_gpu.py;
`make cu-check` compiles every .cu file.)"""
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


def test_cpu_never_takes_the_kernel_path(monkeypatch):
    monkeypatch.setenv("FASTGEN_KERNELS", "cupy")
    assert not kernels.use(torch.zeros(3))
    x = torch.randn(2, 8)
    assert torch.equal(kernels.rms_norm(x, torch.ones(8), 1e-6), kernels.rms_norm_ref(x, torch.ones(8), 1e-6))


def test_bad_setting_is_named(monkeypatch):
    monkeypatch.setenv("FASTGEN_KERNELS", "triton")
    with pytest.raises(ValueError, match="FASTGEN_KERNELS must be 'cupy' or 'reference', got 'triton'"):
        kernels.mode()


def test_every_kernel_source_is_where_the_loaders_look():
    from fastgen_phi.model import GELU_NEW_CU
    assert (kernels.KERNEL_DIR / "fused_ops.cu").is_file() and GELU_NEW_CU.is_file()
