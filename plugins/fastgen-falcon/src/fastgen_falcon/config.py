"""FalconConfig: reads transformers' Falcon config.json and the legacy RefinedWeb ("RW") ones.

Falcon's layout is chosen by a handful of flags, and transformers' modeling_falcon.py decides what each
combination means. This module turns them into three explicit fields the model reads:

  qkv_layout         "qkv": query_key_value rows are [Q; K; V] (Falcon-7B multi-query)
                     "grouped": rows are grouped per KV head, [q_0..q_{g-1}, k, v] for each group
                     (new_decoder_architecture, and also the old multi-head layout, which is the same
                     thing with one query head per group)
  norm_layout        "parallel": one input_layernorm feeds attention and MLP, x + (mlp + attn)
                     "parallel_two_norms": ln_attn feeds attention, ln_mlp feeds the MLP (Falcon-40B)
                     "sequential": x + attn(input_layernorm(x)), then h + mlp(post_attention_layernorm(h))
  num_key_value_heads 1 for multi_query, num_kv_heads for new_decoder_architecture, else num_attention_heads

Combinations transformers itself cannot run (they crash there) are refused with the setting named.
"""
from __future__ import annotations

from dataclasses import dataclass

from fastgen_core import DecoderConfig, UnsupportedModelError
from fastgen_core.layers import get_activation, rope_from_hf

LEGACY_MODEL_TYPES = ("RefinedWeb", "RefinedWebModel")
# configuration_RW.py (the remote code the first Falcon checkpoints shipped with) named these differently.
LEGACY_KEYS = {"n_head": "num_attention_heads", "n_layer": "num_hidden_layers", "n_head_kv": "num_kv_heads",
               "n_embed": "hidden_size"}
SUPPORTED_ROPE_SCALING = ("linear", "llama3")


def normalize_hf(hf: dict) -> dict:
    """A copy of ``hf`` with legacy RW key names and defaults turned into transformers' FalconConfig ones."""
    out = dict(hf)
    for old, new in LEGACY_KEYS.items():
        if old in out:
            value = out.pop(old)
            if out.get(new) is None:
                out[new] = value
    if hf.get("model_type") in LEGACY_MODEL_TYPES:
        # configuration_RW.py's defaults differ from FalconConfig's (parallel_attn=False there).
        for key, default in (("parallel_attn", False), ("multi_query", True), ("bias", False), ("alibi", False),
                             ("tie_word_embeddings", True)):
            if out.get(key) is None:
                out[key] = default
        # "RefinedWeb" is Falcon-40B's remote code, which always ran the new decoder architecture (grouped KV
        # heads, ln_attn/ln_mlp) and had no flag for it; "RefinedWebModel" is Falcon-7B's.
        if out.get("new_decoder_architecture") is None:
            out["new_decoder_architecture"] = hf["model_type"] == "RefinedWeb"
        if out["new_decoder_architecture"] and out.get("num_kv_heads") is None:
            out["num_kv_heads"] = 1      # configuration_RW.py: n_head_kv defaults to 1
    return out


@dataclass
class FalconConfig(DecoderConfig):
    ffn_hidden_size: int = 0
    layer_norm_epsilon: float = 1e-5
    activation: str = "gelu"
    bias: bool = False
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    qkv_layout: str = "qkv"
    norm_layout: str = "parallel"

    @classmethod
    def from_hf(cls, hf: dict) -> "FalconConfig":
        hf = normalize_hf(hf)
        if hf.get("alibi"):
            raise UnsupportedModelError(
                "this Falcon config sets alibi: true (ALiBi positional biases, as in falcon-rw-1b/7b); "
                "fastgen-falcon runs only rotary Falcon models (alibi: false)")
        common = cls.common_from_hf(hf)
        heads, hidden = common["num_attention_heads"], common["hidden_size"]
        if hidden % heads:
            raise UnsupportedModelError(f"Falcon hidden_size ({hidden}) must be divisible by num_attention_heads "
                                        f"({heads})")
        new_arch = bool(hf.get("new_decoder_architecture", False))
        multi_query = bool(hf.get("multi_query", True))
        parallel = bool(hf.get("parallel_attn", True))
        kv_from_config = hf.get("num_kv_heads") or heads     # FalconConfig: None means num_attention_heads

        # How many KV heads, exactly as FalconAttention derives them.
        if new_arch:
            num_kv, qkv_layout = kv_from_config, "grouped"
            if heads % num_kv:
                raise UnsupportedModelError(f"Falcon num_attention_heads ({heads}) must be a multiple of "
                                            f"num_kv_heads ({num_kv})")
        elif multi_query:
            num_kv, qkv_layout = 1, "qkv"
        else:
            # the old multi-head layout interleaves (q, k, v) per head and has one KV head per query head
            num_kv, qkv_layout = heads, "grouped"
            if kv_from_config != heads:
                raise UnsupportedModelError(
                    f"Falcon num_kv_heads={kv_from_config} needs new_decoder_architecture: true or multi_query: "
                    f"true; with both false every head has its own K/V (num_kv_heads must be {heads})")

        # Which layer norms, exactly as transformers' FalconDecoderLayer builds and uses them.
        num_ln = hf.get("num_ln_in_parallel_attn")
        if num_ln is None and new_arch:
            num_ln = 2
        if not parallel:
            if new_arch:
                raise UnsupportedModelError(
                    "Falcon config sets new_decoder_architecture: true with parallel_attn: false, a combination "
                    "transformers cannot run; allowed: parallel_attn: true with new_decoder_architecture")
            norm_layout = "sequential"
        elif num_ln == 2:
            if not new_arch:
                raise UnsupportedModelError(
                    "Falcon config sets num_ln_in_parallel_attn: 2 without new_decoder_architecture, a combination "
                    "transformers cannot run; two layer norms need new_decoder_architecture: true")
            norm_layout = "parallel_two_norms"
        elif num_ln in (None, 1):
            norm_layout = "parallel"
        else:
            raise UnsupportedModelError(f"Falcon num_ln_in_parallel_attn={num_ln!r} is not supported; allowed: 1 or 2")

        activation = hf.get("activation") or "gelu"
        try:
            get_activation(activation)
        except ValueError as e:
            raise UnsupportedModelError(f"Falcon activation: {e}") from None
        theta, scaling = rope_from_hf(hf)
        if scaling is not None:
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind not in SUPPORTED_ROPE_SCALING:
                raise UnsupportedModelError(f"Falcon rope scaling {kind!r} is not supported; allowed: none, "
                                            f"{', '.join(SUPPORTED_ROPE_SCALING)}")
        common.update(num_key_value_heads=num_kv, head_dim=hidden // heads, sliding_window=None,
                      tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)))
        return cls(**common, ffn_hidden_size=hf.get("ffn_hidden_size") or 4 * hidden,
                   layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)), activation=activation,
                   bias=bool(hf.get("bias", False)), rope_theta=theta, rope_scaling=scaling,
                   qkv_layout=qkv_layout, norm_layout=norm_layout)
