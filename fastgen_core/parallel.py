"""Tensor-parallel building blocks for a family's own layers: an older public name of
``fastgen_core.layers.sharded`` (use ``fastgen_core.layers``: ``TPGroup``, ``column_linear``, ``row_linear``,
``shard``, ``vocab_embedding``, ``vocab_linear``), kept so that plugins written against it keep working.

There is no module-level group any more: a layer is handed its group at construction (``tp=``), which the
engine hands a family's model on its config (``DecoderConfig.tp``). ``current()`` therefore knows no group and
answers the one-process group, with a DeprecationWarning: a layer built from it is replicated on every rank,
which is always correct, only not sharded.
"""
from __future__ import annotations

import warnings

from .errors import TensorParallelError
from .layers.sharded import (RowParallelLinear, TPGroup, VocabParallelEmbedding, VocabParallelLMHead, column_linear,
                             full_shape, kv_head_shard, row_linear, shard, split_size, take_slice, vocab_embedding,
                             vocab_linear)

__all__ = ["TPGroup", "TensorParallelError", "RowParallelLinear", "VocabParallelEmbedding", "VocabParallelLMHead",
           "column_linear", "current", "full_shape", "kv_head_shard", "row_linear", "shard", "split_size",
           "take_slice", "vocab_embedding", "vocab_linear"]


def current() -> TPGroup:
    """The one-process group (see the module docstring); pass ``tp=config.tp`` to layers instead."""
    warnings.warn("fastgen_core.parallel.current() knows no group: layers are handed theirs at construction. Pass "
                  "tp=config.tp (the DecoderConfig the engine builds your model from) to the shared layers and to "
                  "column_linear / row_linear; without it this layer is replicated on every rank",
                  DeprecationWarning, stacklevel=2)
    return TPGroup()
