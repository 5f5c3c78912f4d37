"""DecoderConfig: the fields the engine needs from any family's config (families subclass it)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import UnsupportedModelError


def first(hf: dict, *names, default=None):
    """The first of ``names`` present in the HF config (configs name the same thing differently)."""
    for n in names:
        if hf.get(n) is not None:
            return hf[n]
    return default


@dataclass
class DecoderConfig:
    """The fields the engine reads from every family's config (``common_from_hf`` reads them from config.json).

    ``tp`` is not read from config.json: it is the tensor-parallel group (a ``fastgen_core.layers.TPGroup``) the
    engine builds the model for, set on the config it hands the model class; None when the model runs in one
    process. A family passes it to the shared layers (``RotaryAttention(..., tp=c.tp)``) so that they shard.
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    eos_token_id: list[int] = field(default_factory=list)
    dtype: str | None = None                 # checkpoint dtype ("bfloat16"), None when unknown
    hf: dict[str, Any] = field(default_factory=dict, repr=False)
    tp: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def common_from_hf(cls, hf: dict) -> dict:
        """Keyword arguments for the common fields, read with the usual HF aliases."""
        heads = first(hf, "num_attention_heads", "n_head", "num_heads")
        hidden = first(hf, "hidden_size", "n_embd", "d_model")
        if heads is None or hidden is None:
            raise UnsupportedModelError("config.json lacks num_attention_heads / hidden_size")
        eos = hf.get("eos_token_id")
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        return dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hidden,
            num_hidden_layers=first(hf, "num_hidden_layers", "n_layer", "num_layers"),
            num_attention_heads=heads,
            num_key_value_heads=first(hf, "num_key_value_heads", "num_kv_heads", default=heads),
            head_dim=first(hf, "head_dim", default=hidden // heads),
            max_position_embeddings=first(hf, "max_position_embeddings", "n_positions", "max_seq_len", default=2048),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            sliding_window=hf.get("sliding_window") if hf.get("use_sliding_window", True) else None,
            eos_token_id=eos,
            dtype=first(hf, "dtype", "torch_dtype"),
            hf=hf,
        )

    def active_params(self, total: int) -> float:
        """How many of the model's ``total`` parameters one token uses (the bench's roofline floor): all of them.
        A family that runs only part of its weights per token (a mixture of experts) overrides it."""
        return total

    @classmethod
    def from_hf(cls, hf: dict):
        kwargs = cls.common_from_hf(hf)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in kwargs.items() if k in names})
