"""Phi (1, 1.5, 2): one LayerNorm feeds attention and MLP in parallel; partial rotary; biases everywhere."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fastgen_core import DecoderConfig, Kernel, Rule, UnsupportedModelError, WeightMap, fused, kernels
from fastgen_core.layers import (MLP, CausalLM, LayerNorm, ParallelDecoderLayer, RotaryAttention, RotaryEmbedding,
                                 gemv, gemv_fits, get_activation, rope_from_hf)

GELU_NEW_CU = Path(__file__).resolve().parent / "kernels" / "gelu_new.cu"


@dataclass
class PhiConfig(DecoderConfig):
    intermediate_size: int = 0
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu_new"
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    partial_rotary_factor: float = 0.5
    qk_layernorm: bool = False
    rotary_dim: int = 0             # partial_rotary_factor x head_dim, checked by RopeParams.rotary_dim

    @classmethod
    def from_hf(cls, hf: dict) -> "PhiConfig":
        # rope_from_hf reads the factor from rope_parameters (transformers 5) or the top level (microsoft/phi-2)
        rope = rope_from_hf(hf, partial_rotary_factor=0.5)
        c = cls(**cls.common_from_hf(hf), intermediate_size=hf["intermediate_size"],
                layer_norm_eps=hf.get("layer_norm_eps", 1e-5), hidden_act=hf.get("hidden_act", "gelu_new"),
                rope_theta=rope.theta, rope_scaling=rope.scaling, partial_rotary_factor=rope.partial_rotary_factor,
                qk_layernorm=bool(hf.get("qk_layernorm", False)))
        c.rotary_dim = rope.rotary_dim(c.head_dim)
        if c.qk_layernorm and c.num_attention_heads * c.head_dim != c.hidden_size:
            raise UnsupportedModelError(f"qk_layernorm needs head_dim == hidden_size / num_attention_heads "
                                        f"({c.hidden_size // c.num_attention_heads}), got head_dim {c.head_dim}")
        return c


def gelu_new_ref(x: torch.Tensor) -> torch.Tensor:
    """gelu_new(x), transformers' formula op by op: the reference of kernels/gelu_new.cu."""
    return get_activation("gelu_new")(x)


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """One kernel on CUDA where the kernel plan's ``gelu_new`` operation keeps one, else the reference."""
    if not ((kernels.use(x, "gelu_new_paired") or kernels.use(x, "gelu_new")) and x.is_contiguous()
            and x.data_ptr() % 16 == 0):
        return gelu_new_ref(x)
    # bf16/fp16 go two values at a time (the same bits) with ``gelu_new_paired``, else one at a time
    scalar = x.dtype != torch.float32 and not kernels.allows("gelu_new_paired")
    if scalar and not kernels.allows("gelu_new"):
        return gelu_new_ref(x)
    out = torch.empty_like(x)
    total = x.numel()
    if total:
        vecs = -(-total // (16 // x.element_size()))
        name = f"gelu_new{'_scalar' if scalar else ''}_{kernels.SUFFIX[x.dtype]}"
        kernels.launch(GELU_NEW_CU, name, (min(-(-vecs // 256), 65535),), (256,),
                       (kernels.ptr(out), kernels.ptr(x), kernels.i64(total)), x.device)
    return out


def gemm_gelu_new(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu_new(x @ weight^T + bias) as one cuBLASLt GEMM with bias and GELU as its epilogue
    (``torch._addmm_activation(use_gelu=True)``; CUDA only: cuBLASLt's GELU is the tanh form, gelu_new, where
    the op's CPU version applies the erf form). The epilogue applies the activation to the float32 sum of
    product and bias and rounds once, where transformers rounds fc1's output and then each op of the formula:
    not the same bits as ``gelu_new_ref(fc1(x))``, closer to the exact value. It saves the activation's pass
    over fc1's [T, I] output (a read and a write of it)."""
    k = weight.shape[-1]
    y = torch._addmm_activation(bias, x.reshape(-1, k), weight.t(), use_gelu=True)
    return y.view(*x.shape[:-1], weight.shape[0])


def gemm_gelu_fits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether fc1 + gelu_new go through ``gemm_gelu_new``: bf16/fp16 on CUDA (float32 keeps transformers' bits),
    a bias of the same dtype, more than one row, and the kernel plan keeps ``gemm_gelu_new``."""
    return (x.dtype in (torch.bfloat16, torch.float16) and bias is not None and bias.dtype == x.dtype
            and weight.dtype == x.dtype and x.numel() > x.shape[-1] and kernels.use(x, "gemm_gelu_new"))


def fc1_gelu_new(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """gelu_new(F.linear(x, weight, bias)) as one kernel, or None where none applies (then fc1, then gelu_new):
    for one decode row the core's GEMV with gelu_new as its epilogue (kernels/gelu_new.cu), for more rows in
    bf16/fp16 the GEMM with it as its epilogue (``gemm_gelu_new``)."""
    if not x.is_cuda:
        return None
    if gemv_fits(x, weight, bias) and kernels.use(x, "gemv_gelu_new"):
        return gemv(x, weight, bias, source=GELU_NEW_CU, prefix="gemv_gelu_new")
    if gemm_gelu_fits(x, weight, bias):
        return gemm_gelu_new(x, weight, bias)
    return None


class PhiMLP(MLP):
    """The shared MLP; with gelu_new, fc1 and the activation are one kernel on CUDA (``fc1_gelu_new``), else the
    activation is one kernel after fc1's GEMM (fc1's bias in its epilogue)."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str, tp=None):
        super().__init__(hidden_size, intermediate_size, act, bias=True, tp=tp)
        self.gelu_new = act == "gelu_new"
        if self.gelu_new:
            self.act = gelu_new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = fc1_gelu_new(x, self.fc1.weight, self.fc1.bias) if self.gelu_new else None
        return self.fc2(self.act(self.fc1(x)) if h is None else h)


def phi_layer(c: PhiConfig, layer_idx: int, rotary: RotaryEmbedding) -> ParallelDecoderLayer:
    """x + attn(ln(x)) + mlp(ln(x)): attention and MLP read the same normalised input."""
    # optional per-head LayerNorm on q and k before the rotation
    qk_norm = [LayerNorm(c.head_dim, c.layer_norm_eps) if c.qk_layernorm else None for _ in "qk"]
    attn = RotaryAttention(c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, layer_idx, rotary,
                           qkv_bias=True, o_bias=True, sliding_window=c.sliding_window, q_norm=qk_norm[0],
                           k_norm=qk_norm[1], tp=c.tp)
    return ParallelDecoderLayer(attn, PhiMLP(c.hidden_size, c.intermediate_size, c.hidden_act, c.tp),
                                LayerNorm(c.hidden_size, c.layer_norm_eps))


HALF = ("bfloat16", "float16")


class PhiForCausalLM(CausalLM):
    # the family's own operations, planned with the core's (``fastgen plan --preset phi-2`` shows them)
    kernel_ops = {
        "gelu_new": (Kernel("gelu_new_paired", "cupy", "bf16/fp16, two values a thread (the same bits)"),
                     Kernel("gelu_new", "cupy", "one value a thread"), Kernel("reference", "torch")),
        "fc1_gelu_new": (Kernel("gemv_gelu_new", "cupy", "one row: the core's GEMV, gelu_new its epilogue", HALF),
                         Kernel("gemm_gelu_new", "cuda", "more rows: cuBLASLt's GEMM with GELU as its epilogue", HALF),
                         Kernel("reference", "torch", "fc1, then gelu_new")),
    }

    def __init__(self, c: PhiConfig):
        rotary = RotaryEmbedding(c.head_dim, c.rotary_dim, c.rope_theta, c.rope_scaling)
        super().__init__(c.vocab_size, c.hidden_size, [phi_layer(c, i, rotary) for i in range(c.num_hidden_layers)],
                         LayerNorm(c.hidden_size, c.layer_norm_eps), c.tie_word_embeddings, lm_head_bias=True, tp=c.tp)


def weight_map(c: PhiConfig) -> WeightMap:
    L, T = "model.layers.{i}.", "layers.{i}."
    rules = [Rule("model.embed_tokens.weight", "embed_tokens.weight"), Rule("lm_head.bias", "lm_head.bias")]
    for kind in ("weight", "bias"):
        rules += [Rule("model.final_layernorm." + kind, "norm." + kind),
                  Rule(L + "input_layernorm." + kind, T + "input_layernorm." + kind),
                  Rule(L + "self_attn.dense." + kind, T + "self_attn.o_proj." + kind),
                  Rule(L + "mlp.fc1." + kind, T + "mlp.fc1." + kind),
                  Rule(L + "mlp.fc2." + kind, T + "mlp.fc2." + kind),
                  *fused([L + f"self_attn.{p}_proj.{kind}" for p in "qkv"], T + "self_attn.qkv_proj." + kind)]
        if c.qk_layernorm:
            rules += [Rule(L + f"self_attn.{p}_layernorm.{kind}", T + f"self_attn.{p}_norm.{kind}") for p in "qk"]
    ignore = [r"rotary_emb\.inv_freq$"]
    if c.tie_word_embeddings:
        ignore.append(r"^lm_head\.weight$")    # the bias stays its own tensor
    else:
        rules.append(Rule("lm_head.weight", "lm_head.weight"))
    return WeightMap(rules, ignore)
