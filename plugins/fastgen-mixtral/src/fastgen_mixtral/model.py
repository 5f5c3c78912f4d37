"""Mixtral: Llama-style pre-norm blocks whose MLP is a top-k routed mixture of SwiGLU experts."""
from __future__ import annotations

from dataclasses import dataclass

from fastgen_core import DecoderConfig, Rule, UnsupportedModelError, WeightMap
from fastgen_core.layers import (CausalLM, PreNormDecoderLayer, RMSNorm, RotaryAttention, RotaryEmbedding,
                                 SparseMoE, prenorm_decoder_weight_map, rope_from_hf)


@dataclass
class MixtralConfig(DecoderConfig):
    intermediate_size: int = 0
    num_local_experts: int = 8
    num_experts_per_tok: int = 2
    rms_norm_eps: float = 1e-5
    hidden_act: str = "silu"
    rope_theta: float = 1e6
    rope_scaling: dict | None = None

    @classmethod
    def from_hf(cls, hf: dict) -> "MixtralConfig":
        theta, scaling = rope_from_hf(hf)
        experts, top_k = hf.get("num_local_experts", 8), hf.get("num_experts_per_tok", 2)
        if not 1 <= top_k <= experts:
            raise UnsupportedModelError(f"num_experts_per_tok must be in 1..num_local_experts ({experts}), "
                                        f"got {top_k}")
        return cls(**cls.common_from_hf(hf), intermediate_size=hf["intermediate_size"],
                   num_local_experts=experts, num_experts_per_tok=top_k,
                   rms_norm_eps=hf.get("rms_norm_eps", 1e-5), hidden_act=hf.get("hidden_act", "silu"),
                   rope_theta=theta, rope_scaling=scaling)

    def active_params(self, total: int) -> float:
        """A token runs ``num_experts_per_tok`` of the ``num_local_experts`` experts of each layer (each expert:
        gate, up and down, 3 x hidden x intermediate weights)."""
        per_expert = 3 * self.hidden_size * self.intermediate_size
        unused = 1 - self.num_experts_per_tok / self.num_local_experts
        return total - self.num_hidden_layers * self.num_local_experts * per_expert * unused


class MixtralForCausalLM(CausalLM):
    # prompts attended by SDPA's flash kernel (the opt-in exact_sdpa), as transformers attends them: a last-place
    # difference flips the near-tie routes of bf16 (tests/gpu's agreement bar is met so; docs/performance.md)
    exact_prefill = True

    def __init__(self, c: MixtralConfig):
        rotary = RotaryEmbedding(c.head_dim, c.head_dim, c.rope_theta, c.rope_scaling)

        def layer(i):
            attn = RotaryAttention(c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, i,
                                   rotary, sliding_window=c.sliding_window, tp=c.tp)
            # Mixtral always renormalises the kept top-k softmax weights to sum to 1.
            moe = SparseMoE(c.hidden_size, c.intermediate_size, c.num_local_experts, c.num_experts_per_tok,
                            c.hidden_act, renormalize=True, tp=c.tp)
            return PreNormDecoderLayer(c.hidden_size, c.rms_norm_eps, attn, moe)

        super().__init__(c.vocab_size, c.hidden_size, [layer(i) for i in range(c.num_hidden_layers)],
                         RMSNorm(c.hidden_size, c.rms_norm_eps), c.tie_word_embeddings, tp=c.tp)


def _expert_rules(c: MixtralConfig) -> list[Rule]:
    """Two checkpoint layouts fill the same stacked engine parameters.

    Hub layout (and what transformers 5.24 writes back on save): one tensor per expert,
    ``block_sparse_moe.experts.{e}.w1/w3/w2.weight`` -- w1 is the gate, w3 the up projection, w2 down.
    They are concatenated in the order w1_0, w3_0, w1_1, w3_1, ... and reshaped to [E, 2I, H], which is
    exactly the stacked layout (gate rows, then up rows, per expert).
    Stacked layout (transformers 5 in memory, and state dicts saved from it): ``mlp.gate.weight``,
    ``mlp.experts.gate_up_proj [E, 2I, H]`` and ``mlp.experts.down_proj [E, H, I]``, copied as they are.
    """
    L, T = "model.layers.{i}.", "layers.{i}.mlp."
    E, H, I = c.num_local_experts, c.hidden_size, c.intermediate_size

    def stack_gate_up(t):
        return t.reshape(E, 2 * I, H)

    def stack_down(t):
        return t.reshape(E, H, I)

    rules = []
    for e in range(E):
        src = L + f"block_sparse_moe.experts.{e}."
        rules.append(Rule(src + "w1.weight", T + "experts.gate_up_proj", 2 * e, 2 * E, 0, stack_gate_up))
        rules.append(Rule(src + "w3.weight", T + "experts.gate_up_proj", 2 * e + 1, 2 * E, 0, stack_gate_up))
        rules.append(Rule(src + "w2.weight", T + "experts.down_proj", e, E, 0, stack_down))
    for moe in ("block_sparse_moe", "mlp"):
        rules.append(Rule(L + f"{moe}.gate.weight", T + "gate.weight"))
    rules += [Rule(L + "mlp.experts.gate_up_proj", T + "experts.gate_up_proj"),
              Rule(L + "mlp.experts.down_proj", T + "experts.down_proj")]
    return rules


def weight_map(c: MixtralConfig) -> WeightMap:
    return prenorm_decoder_weight_map(_expert_rules(c), c.tie_word_embeddings)
