"""OPT: learned absolute positions (offset 2), LayerNorm before or after each sub-block, a ReLU MLP, and
for some sizes (OPT-350m) token embeddings narrower than the hidden size with project_in / project_out.

Attention is the shared RotaryAttention with rotary=None: OPT multiplies q by head_dim**-0.5 and then
attends unscaled, which is the shared attention's default scale applied inside the softmax.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastgen_core import DecoderConfig, Rule, UnsupportedModelError, WeightMap, fused
from fastgen_core.layers import MLP, CausalLM, ForwardContext, RotaryAttention, get_activation

# OPT's learned positional embedding table reserves its first two rows (a fairseq leftover): position p
# reads row p + 2.
POSITION_OFFSET = 2


@dataclass
class OPTConfig(DecoderConfig):
    ffn_dim: int = 0
    word_embed_proj_dim: int = 0
    do_layer_norm_before: bool = True
    final_layer_norm: bool = True
    activation_function: str = "relu"
    enable_bias: bool = True
    layer_norm_elementwise_affine: bool = True

    @classmethod
    def from_hf(cls, hf: dict) -> "OPTConfig":
        common = cls.common_from_hf(hf)
        heads, hidden = common["num_attention_heads"], common["hidden_size"]
        if hidden % heads:
            raise UnsupportedModelError(f"OPT hidden_size ({hidden}) must be divisible by num_attention_heads "
                                        f"({heads})")
        act = hf.get("activation_function", "relu")
        try:
            get_activation(act)
        except ValueError as e:
            raise UnsupportedModelError(f"OPT activation_function: {e}") from None
        pre_norm = bool(hf.get("do_layer_norm_before", True))
        # transformers keeps the decoder's final LayerNorm only for pre-norm models that do not set
        # _remove_final_layer_norm (OPT-350m is post-norm and has none).
        final_norm = pre_norm and not hf.get("_remove_final_layer_norm", False)
        common.update(num_key_value_heads=heads, head_dim=hidden // heads, sliding_window=None,
                      tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)))
        return cls(**common, ffn_dim=hf["ffn_dim"], word_embed_proj_dim=hf.get("word_embed_proj_dim") or hidden,
                   do_layer_norm_before=pre_norm, final_layer_norm=final_norm, activation_function=act,
                   enable_bias=bool(hf.get("enable_bias", True)),
                   layer_norm_elementwise_affine=bool(hf.get("layer_norm_elementwise_affine", True)))

    @property
    def projects(self) -> bool:
        return self.word_embed_proj_dim != self.hidden_size


class OPTDecoderLayer(nn.Module):
    def __init__(self, c: OPTConfig, layer_idx: int):
        super().__init__()
        self.pre_norm = c.do_layer_norm_before
        self.self_attn = RotaryAttention(c.hidden_size, c.num_attention_heads, c.num_attention_heads, c.head_dim,
                                         layer_idx, rotary=None, qkv_bias=c.enable_bias, o_bias=c.enable_bias,
                                         tp=c.tp)
        self.self_attn_layer_norm = nn.LayerNorm(c.hidden_size, elementwise_affine=c.layer_norm_elementwise_affine)
        self.mlp = MLP(c.hidden_size, c.ffn_dim, c.activation_function, bias=c.enable_bias, tp=c.tp)
        self.final_layer_norm = nn.LayerNorm(c.hidden_size, elementwise_affine=c.layer_norm_elementwise_affine)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        if self.pre_norm:
            h = x + self.self_attn(self.self_attn_layer_norm(x), ctx)
            return h + self.mlp(self.final_layer_norm(h))
        h = self.self_attn_layer_norm(x + self.self_attn(x, ctx))
        return self.final_layer_norm(h + self.mlp(h))


class OPTForCausalLM(CausalLM):
    """embed_tokens and lm_head live in word_embed_proj_dim; the layers in hidden_size."""

    def __init__(self, c: OPTConfig):
        norm = nn.LayerNorm(c.hidden_size, elementwise_affine=c.layer_norm_elementwise_affine) \
            if c.final_layer_norm else nn.Identity()
        super().__init__(c.vocab_size, c.word_embed_proj_dim, [OPTDecoderLayer(c, i) for i in
                                                                range(c.num_hidden_layers)],
                         norm, c.tie_word_embeddings, tp=c.tp)
        self.embed_positions = nn.Embedding(c.max_position_embeddings + POSITION_OFFSET, c.hidden_size)
        self.project_in = nn.Linear(c.word_embed_proj_dim, c.hidden_size, bias=False) if c.projects else None
        self.project_out = nn.Linear(c.hidden_size, c.word_embed_proj_dim, bias=False) if c.projects else None

    def embed(self, input_ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        h = self.embed_tokens(input_ids)
        if self.project_in is not None:
            h = self.project_in(h)
        return h + self.embed_positions(ctx.positions + POSITION_OFFSET)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # project_out follows the final norm; doing it here touches only the rows the engine samples
        if self.project_out is not None:
            hidden = self.project_out(hidden)
        return self.lm_head(hidden)


def weight_map(c: OPTConfig) -> WeightMap:
    """Checkpoints saved from OPTForCausalLM prefix tensors with "model.decoder."; the original facebook/opt-*
    ones (saved from OPTModel) with "decoder.". Both are accepted."""
    rules: list[Rule] = []
    kinds = ["weight"] + (["bias"] if c.enable_bias else [])
    norm_kinds = ["weight", "bias"] if c.layer_norm_elementwise_affine else []
    for P in ("model.decoder.", "decoder."):
        L, T = P + "layers.{i}.", "layers.{i}."
        rules += [Rule(P + "embed_tokens.weight", "embed_tokens.weight"),
                  Rule(P + "embed_positions.weight", "embed_positions.weight")]
        if c.projects:
            rules += [Rule(P + "project_in.weight", "project_in.weight"),
                      Rule(P + "project_out.weight", "project_out.weight")]
        if c.final_layer_norm:
            rules += [Rule(P + "final_layer_norm." + k, "norm." + k) for k in norm_kinds]
        for k in kinds:
            rules += fused([L + f"self_attn.{p}_proj.{k}" for p in "qkv"], T + "self_attn.qkv_proj." + k)
            rules += [Rule(L + "self_attn.out_proj." + k, T + "self_attn.o_proj." + k),
                      Rule(L + "fc1." + k, T + "mlp.fc1." + k),
                      Rule(L + "fc2." + k, T + "mlp.fc2." + k)]
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            rules += [Rule(L + f"{norm}.{k}", T + f"{norm}.{k}") for k in norm_kinds]
    ignore = []
    if c.tie_word_embeddings:
        ignore.append(r"^lm_head\.weight$")
    else:
        rules.append(Rule("lm_head.weight", "lm_head.weight"))
    return WeightMap(rules, ignore)
