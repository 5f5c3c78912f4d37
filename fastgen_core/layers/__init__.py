"""Shared torch building blocks that family plugins compose (public: plugins import from here)."""
from .activations import get_activation
from .attention import AttentionMetadata, ForwardContext, PagedAttention, paged_attention_ref, write_kv_ref
from .mlp import GatedMLP, MLP
from .moe import GroupedExperts, SparseMoE, grouped_experts_ref, moe_dense_ref, route_topk
from .norm import RMSNorm
from .rotary import RotaryEmbedding, rope_from_hf
from .transformer import CausalLM, PreNormDecoderLayer, RotaryAttention, gated_mlp_rules, prenorm_decoder_weight_map

__all__ = ["get_activation", "AttentionMetadata", "ForwardContext", "PagedAttention", "paged_attention_ref",
           "write_kv_ref", "GatedMLP", "MLP", "RMSNorm", "RotaryEmbedding", "rope_from_hf",
           "CausalLM", "PreNormDecoderLayer", "RotaryAttention", "gated_mlp_rules", "prenorm_decoder_weight_map",
           "GroupedExperts", "SparseMoE", "grouped_experts_ref", "moe_dense_ref", "route_topk"]
