"""GPT-NeoX (GPT-NeoX-20B, the Pythia suite): LayerNorms with bias, rotary on the first ``rotary_pct`` of each
head's channels (rotate-half, the convention the core uses), a GELU MLP, biases on every projection, and
attention and MLP side by side (``use_parallel_residual``, the default) or one after the other.

Every quirk is a config field; the model is composed from ``fastgen_core.layers`` alone.
"""
from __future__ import annotations

from dataclasses import dataclass

from fastgen_core import DecoderConfig, UnsupportedModelError
from fastgen_core.layers import (MLP, CausalLM, LayerNorm, ParallelDecoderLayer, PreNormDecoderLayer, RotaryAttention,
                                 RotaryEmbedding, get_activation, rope_from_hf)

# transformers' GPTNeoXConfig rotates a quarter of each head when config.json says nothing (rotary_pct 0.25)
DEFAULT_ROTARY_PCT = 0.25


@dataclass
class GPTNeoXConfig(DecoderConfig):
    intermediate_size: int = 0
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    rotary_dim: int = 0                     # channels per head that rotate (rotary_pct x head_dim)
    use_parallel_residual: bool = True
    attention_bias: bool = True             # on query_key_value and dense (the MLP always has biases)

    @classmethod
    def from_hf(cls, hf: dict) -> "GPTNeoXConfig":
        common = cls.common_from_hf(hf)
        heads, hidden = common["num_attention_heads"], common["hidden_size"]
        if hidden % heads:
            raise UnsupportedModelError(f"GPT-NeoX hidden_size ({hidden}) must be divisible by num_attention_heads "
                                        f"({heads})")
        # one K/V head per query head and no sliding window, whatever else the file says
        common.update(num_key_value_heads=heads, head_dim=hidden // heads, sliding_window=None)
        rope = rope_from_hf(hf, partial_rotary_factor=DEFAULT_ROTARY_PCT)
        rotary_dim = rope.rotary_dim(common["head_dim"])
        act = hf.get("hidden_act", "gelu")
        try:   # refuse what the core cannot compute now, not halfway through loading the weights
            RotaryEmbedding(common["head_dim"], rotary_dim, rope.theta, rope.scaling)
            get_activation(act)
        except ValueError as e:
            raise UnsupportedModelError(f"GPT-NeoX config not supported by fastgen-gptneox: {e}") from None
        return cls(**common, intermediate_size=hf["intermediate_size"],
                   layer_norm_eps=float(hf.get("layer_norm_eps", 1e-5)), hidden_act=act, rope_theta=rope.theta,
                   rope_scaling=rope.scaling, rotary_dim=rotary_dim,
                   use_parallel_residual=bool(hf.get("use_parallel_residual", True)),
                   attention_bias=bool(hf.get("attention_bias", True)))


class GPTNeoXForCausalLM(CausalLM):
    def __init__(self, c: GPTNeoXConfig):
        rotary = RotaryEmbedding(c.head_dim, c.rotary_dim, c.rope_theta, c.rope_scaling)

        def layer(i: int):
            attn = RotaryAttention(c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, i, rotary,
                                   qkv_bias=c.attention_bias, o_bias=c.attention_bias, tp=c.tp)
            mlp = MLP(c.hidden_size, c.intermediate_size, c.hidden_act, bias=True, tp=c.tp)
            norms = LayerNorm(c.hidden_size, c.layer_norm_eps), LayerNorm(c.hidden_size, c.layer_norm_eps)
            if c.use_parallel_residual:     # x + attn(ln1(x)) + mlp(ln2(x))
                return ParallelDecoderLayer(attn, mlp, *norms)
            return PreNormDecoderLayer(c.hidden_size, c.layer_norm_eps, attn, mlp, *norms)

        super().__init__(c.vocab_size, c.hidden_size, [layer(i) for i in range(c.num_hidden_layers)],
                         LayerNorm(c.hidden_size, c.layer_norm_eps), c.tie_word_embeddings, tp=c.tp)
