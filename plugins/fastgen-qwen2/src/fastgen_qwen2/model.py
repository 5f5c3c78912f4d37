"""Qwen2: Llama's pre-norm block with biases on the q/k/v projections (none on o_proj), tied embeddings
on the small sizes, and an optional sliding window on some layers. Qwen3 (dense) is the same block with an
RMSNorm over each query and key head before the rotation (``q_norm``, ``k_norm``) and biases only if
``attention_bias`` (on q/k/v and o_proj alike).

Every quirk is a config field read from config.json (``layer_types``, ``sliding_window``, ``qk_norm``...);
the model itself is composed from ``fastgen_core.layers`` and holds no Qwen-specific attention code.
"""
from __future__ import annotations

from dataclasses import dataclass

from fastgen_core import DecoderConfig, UnsupportedModelError
from fastgen_core.layers import (CausalLM, GatedMLP, PreNormDecoderLayer, RMSNorm, RotaryAttention,
                                 RotaryEmbedding, get_activation, rope_from_hf)

FULL, SLIDING = "full_attention", "sliding_attention"


def layer_types_from_hf(hf: dict, num_layers: int, sliding_window: int | None) -> tuple[str, ...]:
    """Per-layer attention kinds, exactly as transformers' Qwen2Config derives them.

    Newer config.json files list ``layer_types``; older ones (Qwen2, Qwen2.5 releases) only have
    ``use_sliding_window`` and ``max_window_layers``: layers with index >= max_window_layers slide, and
    only when a window is in effect.
    """
    types = hf.get("layer_types")
    if types is None:
        max_window_layers = hf.get("max_window_layers", 28)   # transformers' Qwen2Config default
        return tuple(SLIDING if sliding_window is not None and i >= max_window_layers else FULL
                     for i in range(num_layers))
    if len(types) != num_layers:
        raise UnsupportedModelError(f"config.json has {len(types)} layer_types for num_hidden_layers={num_layers}; "
                                    "they must be equal")
    unknown = sorted({t for t in types if t not in (FULL, SLIDING)})
    if unknown:
        raise UnsupportedModelError(f"Qwen2 layer_types {unknown} are not supported by fastgen-qwen2; "
                                    f"supported: {[FULL, SLIDING]}")
    return tuple(types)


@dataclass
class Qwen2Config(DecoderConfig):
    intermediate_size: int = 0
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    layer_types: tuple[str, ...] = ()
    qkv_bias: bool = True           # Qwen2: always; Qwen3: attention_bias
    o_bias: bool = False            # Qwen2: never; Qwen3: attention_bias
    qk_norm: bool = False           # Qwen3: RMSNorm per query / key head before the rotation

    def layer_sliding_window(self, i: int) -> int | None:
        """The window layer ``i`` attends over (None: the whole context)."""
        return self.sliding_window if self.layer_types[i] == SLIDING else None

    @classmethod
    def from_hf(cls, hf: dict) -> "Qwen2Config":
        common = cls.common_from_hf(hf)
        # Qwen2 defaults use_sliding_window to False (the core's generic reading assumes a window applies
        # whenever one is given), and a window only exists when it is switched on.
        window = hf.get("sliding_window") if hf.get("use_sliding_window", False) else None
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise UnsupportedModelError(f"sliding_window must be a positive integer, got {window!r}")
        common["sliding_window"] = window
        theta, scaling = rope_from_hf(hf)
        try:   # refuse RoPE variants the core cannot compute now, not halfway through loading weights
            RotaryEmbedding(common["head_dim"], base=theta, scaling=scaling)
            act = hf.get("hidden_act", "silu")
            get_activation(act)
        except ValueError as e:
            raise UnsupportedModelError(f"Qwen2 config not supported: {e}") from None
        qwen3 = hf.get("model_type") == "qwen3"
        bias = bool(hf.get("attention_bias", False))
        return cls(**common, intermediate_size=hf["intermediate_size"], rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
                   hidden_act=act, rope_theta=theta, rope_scaling=scaling,
                   layer_types=layer_types_from_hf(hf, common["num_hidden_layers"], window),
                   qkv_bias=bias if qwen3 else True, o_bias=bias if qwen3 else False, qk_norm=qwen3)


class Qwen2ForCausalLM(CausalLM):
    def __init__(self, c: Qwen2Config):
        rotary = RotaryEmbedding(c.head_dim, c.head_dim, c.rope_theta, c.rope_scaling)

        def layer(i: int):
            qk = [RMSNorm(c.head_dim, c.rms_norm_eps) if c.qk_norm else None for _ in "qk"]
            attn = RotaryAttention(c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, i,
                                   rotary, qkv_bias=c.qkv_bias, o_bias=c.o_bias,
                                   sliding_window=c.layer_sliding_window(i), q_norm=qk[0], k_norm=qk[1], tp=c.tp)
            mlp = GatedMLP(c.hidden_size, c.intermediate_size, c.hidden_act, bias=False, tp=c.tp)
            return PreNormDecoderLayer(c.hidden_size, c.rms_norm_eps, attn, mlp)

        super().__init__(c.vocab_size, c.hidden_size, [layer(i) for i in range(c.num_hidden_layers)],
                         RMSNorm(c.hidden_size, c.rms_norm_eps), c.tie_word_embeddings, tp=c.tp)
