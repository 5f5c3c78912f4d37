"""Normalisations families compose: RMSNorm (Llama, Qwen2, Mixtral) and LayerNorm with bias (GPT-NeoX, Phi,
Falcon). Both offer ``add_and_norm`` (residual add fused with the norm), which the decoder blocks use;
LayerNorm also ``add3_and_norm`` (a parallel-residual layer's three-way sum fused with the next norm)."""
import torch
from torch import nn

from .. import kernels


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back, as transformers' Llama does (``kernels.rms_norm_ref``)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.rms_norm(x, self.weight, self.eps)

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual += x`` (in place: the residual stream) and return the norm of the sum, in one kernel
        where the CuPy kernels run."""
        return kernels.rms_norm(x, self.weight, self.eps, residual)


class LayerNorm(nn.LayerNorm):
    """LayerNorm with a bias (GPT-NeoX, Phi, Falcon, OPT): ``nn.LayerNorm``'s parameters (``weight``,
    ``bias``) and numerics, computed in the input's dtype as transformers' ``nn.LayerNorm`` is.

    ``add_and_norm`` gives it the interface of ``RMSNorm``, so the shared decoder blocks take either.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, bias: bool = True):
        super().__init__(hidden_size, eps=eps, bias=bias)

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual += x`` (in place: the residual stream) and return the norm of the sum."""
        residual.add_(x)
        return self(residual)

    def add3_and_norm(self, a: torch.Tensor, m: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, norm(s)) for s = (a + m) + x, in one kernel where the CuPy kernels run (a parallel layer's
        output and the next layer's norm of it)."""
        return kernels.add3_layer_norm(a, m, x, self.weight, self.bias, self.eps)
