"""Llama / Mistral: pre-norm blocks of rotary GQA attention and a SwiGLU MLP."""
from __future__ import annotations

from dataclasses import dataclass

from fastgen_core import DecoderConfig, WeightMap
from fastgen_core.layers import (CausalLM, GatedMLP, PreNormDecoderLayer, RMSNorm, RotaryAttention,
                                 RotaryEmbedding, gated_mlp_rules, prenorm_decoder_weight_map, rope_from_hf)


@dataclass
class LlamaConfig(DecoderConfig):
    intermediate_size: int = 0
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    attention_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_hf(cls, hf: dict) -> "LlamaConfig":
        theta, scaling = rope_from_hf(hf)
        return cls(**cls.common_from_hf(hf), intermediate_size=hf["intermediate_size"],
                   rms_norm_eps=hf.get("rms_norm_eps", 1e-6), hidden_act=hf.get("hidden_act", "silu"),
                   rope_theta=theta, rope_scaling=scaling, attention_bias=bool(hf.get("attention_bias", False)),
                   mlp_bias=bool(hf.get("mlp_bias", False)))


class LlamaForCausalLM(CausalLM):
    def __init__(self, c: LlamaConfig):
        rotary = RotaryEmbedding(c.head_dim, c.head_dim, c.rope_theta, c.rope_scaling)

        def layer(i):
            attn = RotaryAttention(c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, i,
                                   rotary, qkv_bias=c.attention_bias, o_bias=c.attention_bias,
                                   sliding_window=c.sliding_window, tp=c.tp)
            mlp = GatedMLP(c.hidden_size, c.intermediate_size, c.hidden_act, bias=c.mlp_bias, tp=c.tp)
            return PreNormDecoderLayer(c.hidden_size, c.rms_norm_eps, attn, mlp)

        super().__init__(c.vocab_size, c.hidden_size, [layer(i) for i in range(c.num_hidden_layers)],
                         RMSNorm(c.hidden_size, c.rms_norm_eps), c.tie_word_embeddings, tp=c.tp)


def weight_map(c: LlamaConfig) -> WeightMap:
    return prenorm_decoder_weight_map(gated_mlp_rules(c.mlp_bias), c.tie_word_embeddings,
                                      qkv_bias=c.attention_bias, o_bias=c.attention_bias)
