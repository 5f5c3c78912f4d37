import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from .activations import get_activation
from .sharded import TPGroup, column_linear, group_of, row_linear, split_size


def gated_act(gate_up: torch.Tensor, act) -> torch.Tensor:
    """act(gate) * up for gate_up = [gate | up] (two equal halves of the last dimension): SiLU through the
    fused CuPy kernel (``kernels.silu_and_mul``, its torch reference on CPU), any other activation in torch."""
    if act is F.silu:
        return kernels.silu_and_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return act(gate) * up


class GatedMLP(nn.Module):
    """act(x @ gate) * (x @ up) @ down, with gate and up fused in one GEMM (``gate_up_proj``). ``tp``: the
    tensor-parallel group whose ranks split the intermediate columns (None: one process)."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str = "silu", bias: bool = False,
                 tp: TPGroup | None = None):
        super().__init__()
        tp = group_of(tp)                   # this rank's intermediate columns under tensor parallelism
        n = self.intermediate_size = split_size(intermediate_size, tp, "the intermediate size")
        i0 = tp.rank * n
        self.gate_up_proj = column_linear(hidden_size, 2 * intermediate_size, [(i0, n), (intermediate_size + i0, n)],
                                          bias, tp)
        self.down_proj = row_linear(intermediate_size, hidden_size, bias, [(i0, n)], tp)
        self.act = get_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(gated_act(self.gate_up_proj(x), self.act))


class MLP(nn.Module):
    """fc2(act(fc1(x))): OPT, Phi-2, Falcon. ``tp`` as GatedMLP's."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str = "gelu", bias: bool = True,
                 tp: TPGroup | None = None):
        super().__init__()
        tp = group_of(tp)
        n = split_size(intermediate_size, tp, "the intermediate size")
        self.fc1 = column_linear(hidden_size, intermediate_size, [(tp.rank * n, n)], bias, tp)
        self.fc2 = row_linear(intermediate_size, hidden_size, bias, [(tp.rank * n, n)], tp)
        self.act = get_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
