"""Rotary position embedding, with partial rotary, and the rotary settings of a config.json.

The convention is rotate-half (GPT-NeoX's, transformers' default): channel ``j`` of a head's rotated part
pairs with channel ``j + rotary_dim / 2``, not with ``j + 1`` (GPT-J's interleaved pairs). A checkpoint
trained with interleaved pairs needs its q/k projection rows permuted to this layout in the weight map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UnsupportedModelError
from ..model_config import first as first_of


@dataclass(frozen=True)
class RopeParams:
    """What a config.json says about rotary embeddings, whichever spelling it uses (``rope_from_hf``).

    theta: the base frequency (``rope_theta``; GPT-NeoX / Pythia: ``rotary_emb_base``).
    scaling: the scaling dict (``rope_scaling`` or a non-default ``rope_parameters``), None for plain RoPE.
    partial_rotary_factor: the fraction of each head's channels that rotate, the first ones (GPT-NeoX:
    ``rotary_pct``); 1.0 rotates all of them.

    It unpacks as ``theta, scaling``, the pair earlier versions of ``rope_from_hf`` returned.
    """

    theta: float
    scaling: dict | None
    partial_rotary_factor: float = 1.0

    def __iter__(self):
        return iter((self.theta, self.scaling))

    def rotary_dim(self, head_dim: int) -> int:
        """Channels per head that rotate, ``int(head_dim * partial_rotary_factor)`` as transformers computes
        it; an UnsupportedModelError unless that is a positive even number (RotaryEmbedding rotates pairs)."""
        r = int(head_dim * self.partial_rotary_factor)
        if r <= 0 or r % 2 or r > head_dim:
            raise UnsupportedModelError(
                f"partial rotary factor {self.partial_rotary_factor} x head_dim {head_dim} gives rotary_dim {r}; "
                f"it must be a positive even number <= head_dim")
        return r


def rope_from_hf(hf: dict, partial_rotary_factor: float = 1.0) -> RopeParams:
    """The rotary settings of a config.json: transformers-5 style (``rope_parameters``: ``rope_theta``,
    ``partial_rotary_factor``, ``rope_type``...) or the older top-level keys (``rope_theta`` or GPT-NeoX's
    ``rotary_emb_base``; ``rope_scaling``; ``partial_rotary_factor`` or GPT-NeoX's ``rotary_pct``), in that
    order of precedence. ``partial_rotary_factor`` is the family's default when the file names none
    (transformers' GPTNeoXConfig: 0.25). Unpacks as ``theta, scaling``."""
    params = hf.get("rope_parameters") or {}
    theta = first_of(params, "rope_theta", default=first_of(hf, "rope_theta", "rotary_emb_base", default=10000.0))
    scaling = hf.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) == "default":
        scaling = None
    factor = first_of(params, "partial_rotary_factor",
                      default=first_of(hf, "partial_rotary_factor", "rotary_pct", default=partial_rotary_factor))
    return RopeParams(float(theta), scaling, float(factor))


def _inv_freq(rotary_dim: int, base: float, scaling: dict | None) -> torch.Tensor:
    inv = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))
    if not scaling:
        return inv
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        return inv / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv
        out = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, out)
    raise ValueError(f"unsupported rope scaling {kind!r}; supported: default, linear, llama3")


class RotaryEmbedding(nn.Module):
    """Rotates the first ``rotary_dim`` channels of each head; the rest pass through (Phi-2's partial RoPE)."""

    def __init__(self, head_dim: int, rotary_dim: int | None = None, base: float = 10000.0,
                 scaling: dict | None = None):
        super().__init__()
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim or head_dim
        if self.rotary_dim % 2 or self.rotary_dim > head_dim:
            raise ValueError(f"rotary_dim must be even and <= head_dim ({head_dim}), got {self.rotary_dim}")
        self.register_buffer("inv_freq", _inv_freq(self.rotary_dim, base, scaling), persistent=False)
        self._memo: tuple | None = None       # (positions, (cos, sin)) of the last step: see cos_sin

    def reset(self) -> None:
        """Forget the last step's cos/sin. The engine calls it after capturing CUDA graphs (the memo points
        into their memory pool) and when it closes."""
        self._memo = None

    def inv_freq_f32(self) -> torch.Tensor:
        """``inv_freq`` as a contiguous float32 tensor (what the fused kernel reads)."""
        if self.inv_freq.dtype != torch.float32:
            self.inv_freq = self.inv_freq.float()
        return self.inv_freq

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # every layer of a forward passes the same positions tensor: compute once per step, not per layer
        # (on a GPU the step is bound by host time per op; the memo saves ~6 launches per layer)
        memo = self._memo
        if memo is not None and memo[0] is positions:
            return memo[1]
        out = self._cos_sin(positions)
        self._memo = (positions, out)
        return out

    def _cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float().unsqueeze(-1) * self.inv_freq.float().to(positions.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    @staticmethod
    def _rotate_half(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """q: [T, Hq, D], k: [T, Hk, D]; returns rotated copies."""
        cos, sin = self.cos_sin(positions)
        cos = cos.unsqueeze(1).to(q.dtype)
        sin = sin.unsqueeze(1).to(q.dtype)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    def _rotate(self, x, cos, sin):
        r = self.rotary_dim
        if r == self.head_dim:
            return x * cos + self._rotate_half(x) * sin
        xr, xp = x[..., :r], x[..., r:]
        return torch.cat((xr * cos + self._rotate_half(xr) * sin, xp), dim=-1)


ROTARY_KV_CU = "rotary_kv.cu"


def rotary_kv_write_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                        rotary: RotaryEmbedding | None, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        slot_mapping: torch.Tensor) -> torch.Tensor:
    """Rotate q and k ([T, H, D]) by their positions (``rotary`` None: no rotation), write k and v into their
    cache slots, and return the rotated q. The reference of ``rotary_kv_write``."""
    from .attention import write_kv_ref
    if rotary is not None:
        q, k = rotary(positions, q, k)
    write_kv_ref(k, v, k_cache, v_cache, slot_mapping)
    return q


def rotary_kv_vector_ok(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                        v_cache: torch.Tensor, rot: int) -> bool:
    """Whether ``rotary_kv_write``'s rows are 16-byte aligned throughout, so that kernels/rotary_kv.cu's vector
    form can take them: head_dim, rot / 2 and the rows' strides multiples of 16 bytes' worth of elements, every
    pointer 16-byte aligned."""
    vec = 16 // q.element_size()
    d = q.shape[-1]
    return (d % vec == 0 and (rot // 2) % vec == 0 and rot // 2 <= 256
            and all(t.stride(0) % vec == 0 for t in (q, k, v))
            and all(t.data_ptr() % 16 == 0 for t in (q, k, v, k_cache, v_cache)))


def rotary_kv_write(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                    rotary: RotaryEmbedding | None, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    slot_mapping: torch.Tensor) -> torch.Tensor:
    """``rotary_kv_write_ref`` as one kernel launch per layer on CUDA (kernels/rotary_kv.cu): q is rotated
    in place, k rotated on its way into the cache."""
    from .. import kernels
    dtype = q.dtype
    if not ((kernels.use(q, "rotary_kv_vec") or kernels.use(q, "rotary_kv"))
            and k.dtype == v.dtype == k_cache.dtype == dtype
            and positions.dtype == slot_mapping.dtype == torch.long
            and all(t.stride(-1) == 1 and t.stride(-2) == t.shape[-1] for t in (q, k, v))):
        return rotary_kv_write_ref(q, k, v, positions, rotary, k_cache, v_cache, slot_mapping)
    t, hq, d = q.shape
    hk = k.shape[1]
    if t:
        rot = rotary.rotary_dim if rotary is not None else 0
        inv_freq = rotary.inv_freq_f32() if rotary is not None else None
        if rotary_kv_vector_ok(q, k, v, k_cache, v_cache, rot) and kernels.allows("rotary_kv_vec"):
            vec = 16 // q.element_size()
            name, work = "rotary_kv_vec", max(hk * d // vec, (hq + hk) * (rot // 2) // vec)
        elif not kernels.allows("rotary_kv"):
            return rotary_kv_write_ref(q, k, v, positions, rotary, k_cache, v_cache, slot_mapping)
        else:
            name, work = "rotary_kv", max(hk * d, hq * (rot // 2))
        kernels.launch(kernels.core_source(ROTARY_KV_CU), f"{name}_{kernels.SUFFIX[dtype]}", (t,),
                       (kernels.threads(work),),
                       (kernels.ptr(q), kernels.i64(q.stride(0)), kernels.ptr(k), kernels.i64(k.stride(0)),
                        kernels.ptr(v), kernels.i64(v.stride(0)), kernels.ptr(k_cache), kernels.ptr(v_cache),
                        kernels.ptr(slot_mapping), kernels.ptr(positions), kernels.ptr(inv_freq),
                        kernels.i32(hq), kernels.i32(hk), kernels.i32(d), kernels.i32(rot)), q.device)
    return q
