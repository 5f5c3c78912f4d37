"""Shared torch building blocks that family plugins compose (public: plugins import from here)."""
from .activations import get_activation
from .attention import AttentionMetadata, ForwardContext, PagedAttention, paged_attention_ref, write_kv_ref
from .mlp import GatedMLP, MLP
from .moe import GroupedExperts, SparseMoE, grouped_experts_ref, moe_dense_ref, route_topk
from .norm import LayerNorm, RMSNorm
from .rotary import RopeParams, RotaryEmbedding, rope_from_hf
from .sharded import TPGroup, column_linear, row_linear, shard, vocab_embedding, vocab_linear
from .linear import Linear, gemv, gemv_fits
from .transformer import (CausalLM, ParallelDecoderLayer, Pending, PreNormDecoderLayer, RotaryAttention,
                          gated_mlp_rules, prenorm_decoder_weight_map, settle, ungroup_qkv)

__all__ = ["get_activation", "AttentionMetadata", "ForwardContext", "PagedAttention", "paged_attention_ref",
           "write_kv_ref", "GatedMLP", "MLP", "LayerNorm", "RMSNorm", "RopeParams", "RotaryEmbedding", "rope_from_hf",
           "CausalLM", "ParallelDecoderLayer", "Pending", "PreNormDecoderLayer", "RotaryAttention",
           "gated_mlp_rules", "prenorm_decoder_weight_map", "settle", "ungroup_qkv", "Linear",
           "GroupedExperts", "SparseMoE", "grouped_experts_ref", "moe_dense_ref", "route_topk",
           "TPGroup", "gemv", "gemv_fits", "column_linear", "row_linear", "shard", "vocab_embedding", "vocab_linear"]
