"""Decoder building blocks shared by families: rotary attention, the pre-norm block, the causal-LM shell.

Engine parameter names follow transformers where users know them (``embed_tokens``, ``qkv_proj``,
``o_proj``, ``input_layernorm``...), so a family's weight map reads like the checkpoint it loads.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .. import kernels
from ..ops import MANY_PROGRAMS, Kernel, KernelPlan
from ..weights import Rule, WeightMap, fused
from .attention import ForwardContext, PagedAttention
from .decode_attention import fused_decode_attention
from .norm import RMSNorm
from .rotary import RotaryEmbedding, rotary_kv_write
from .sharded import (TPGroup, column_linear, group_of, kv_head_shard, row_linear, split_size, vocab_embedding,
                      vocab_linear)


class RotaryAttention(nn.Module):
    """Fused QKV projection -> optional per-head q/k norms -> rotary (full, partial or none) -> paged
    attention -> output projection. ``tp``: the tensor-parallel group to shard over (None: one process)."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, layer_idx: int,
                 rotary: RotaryEmbedding | None, qkv_bias: bool = False, o_bias: bool = False,
                 sliding_window: int | None = None, scale: float | None = None,
                 q_norm: nn.Module | None = None, k_norm: nn.Module | None = None, tp: TPGroup | None = None):
        super().__init__()
        self.q_norm, self.k_norm = q_norm, k_norm
        # under tensor parallelism this rank's query heads and the KV heads they read (see sharded.py)
        tp = group_of(tp)
        heads = split_size(num_heads, tp, "num_attention_heads")
        kv_heads, first_kv = kv_head_shard(num_kv_heads, tp)
        self.num_heads, self.num_kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_size, self.kv_size = heads * head_dim, kv_heads * head_dim
        full_q, full_kv = num_heads * head_dim, num_kv_heads * head_dim
        q0, kv0 = tp.rank * self.q_size, first_kv * head_dim
        self.qkv_proj = column_linear(
            hidden_size, full_q + 2 * full_kv,
            [(q0, self.q_size), (full_q + kv0, self.kv_size), (full_q + full_kv + kv0, self.kv_size)], qkv_bias, tp)
        self.o_proj = row_linear(full_q, hidden_size, o_bias, [(q0, self.q_size)], tp)
        self.rotary = rotary
        self.attn = PagedAttention(heads, kv_heads, head_dim, layer_idx, scale, sliding_window)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.k_norm is not None:
            k = self.k_norm(k)
        k_cache, v_cache = ctx.kv_caches[self.attn.layer_idx]
        if q.is_cuda and kernels.allows("fused_rotary_decode"):
            # an opt-in kernel: a decode-only step of a few sequences takes rotary, the KV write and attention at once
            out = fused_decode_attention(q, k, v, ctx.positions, self.rotary, k_cache, v_cache, ctx.attn,
                                         self.attn.scale, self.attn.sliding_window, self.attn)
            if out is not None:
                return self.o_proj(out)
        if kernels.use(q, "rotary_kv_vec") or kernels.use(q, "rotary_kv"):
            # one kernel: q rotated in place, k rotated on its way into the cache, v copied there
            q = rotary_kv_write(q, k, v, ctx.positions, self.rotary, k_cache, v_cache, ctx.attn.slot_mapping)
            return self.o_proj(self.attn.attend(q, ctx))
        if self.rotary is not None:
            q, k = self.rotary(ctx.positions, q, k)
        return self.o_proj(self.attn(q, k, v, ctx))


class Pending(NamedTuple):
    """A decoder layer's output left unsummed for the next norm, which adds it in its own kernel: ``x + mlp``
    (pre-norm layers, ``attn`` None) or ``(attn + mlp) + x`` (parallel layers). Layers take a Pending or a
    tensor as input (``settle``); ``CausalLM.forward`` settles the last one with the final norm."""
    x: torch.Tensor
    mlp: torch.Tensor
    attn: torch.Tensor | None = None


def settle(h: torch.Tensor | Pending, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(the layer input h stands for, ``norm`` of it). A pre-norm Pending is added into its ``x`` in place
    (the residual stream) by ``norm.add_and_norm``; a parallel one goes to ``norm.add3_and_norm`` when the
    norm has it; a tensor is just normed."""
    if not isinstance(h, Pending):
        return h, norm(h)
    if h.attn is None:
        normed = norm.add_and_norm(h.mlp, h.x)
        return h.x, normed
    if hasattr(norm, "add3_and_norm"):
        return norm.add3_and_norm(h.attn, h.mlp, h.x)
    s = h.attn + h.mlp + h.x
    return s, norm(s)


class PreNormDecoderLayer(nn.Module):
    """x + attn(norm(x)); then h + mlp(norm(h)). Llama, Mistral, Qwen2, Mixtral (the mlp may be an MoE) with
    the default RMSNorms; GPT-NeoX (``use_parallel_residual: false``) and Falcon (``parallel_attn: false``)
    pass LayerNorms. A norm passed in needs ``add_and_norm(x, residual)``, as RMSNorm and LayerNorm have."""

    def __init__(self, hidden_size: int, eps: float, self_attn: nn.Module, mlp: nn.Module,
                 input_layernorm: nn.Module | None = None, post_attention_layernorm: nn.Module | None = None):
        super().__init__()
        self.input_layernorm = input_layernorm if input_layernorm is not None else RMSNorm(hidden_size, eps)
        self.self_attn = self_attn
        self.post_attention_layernorm = (post_attention_layernorm if post_attention_layernorm is not None
                                         else RMSNorm(hidden_size, eps))
        self.mlp = mlp

    def forward(self, x: torch.Tensor | Pending, ctx: ForwardContext) -> Pending:
        x, normed = settle(x, self.input_layernorm)
        attn = self.self_attn(normed, ctx)
        # the residual stream: x + attn is added in place, fused with the norm that follows; x + mlp is left
        # to the next layer's input norm (or the final norm)
        normed = self.post_attention_layernorm.add_and_norm(attn, x)
        return Pending(x, self.mlp(normed))


class ParallelDecoderLayer(nn.Module):
    """x + attn(input_layernorm(x)) + mlp(post_attention_layernorm(x)): attention and MLP side by side, both
    reading the layer's input (GPT-NeoX's ``use_parallel_residual``, Falcon-40B's ``ln_attn`` / ``ln_mlp``).
    With ``post_attention_layernorm=None`` one norm feeds both (Phi, Falcon-7B).

    The sum is ``(attn + mlp) + x``, the order (up to the commutative first addition) transformers' GPT-NeoX,
    Phi and Falcon use, so float32 results match them bit for bit.
    """

    def __init__(self, self_attn: nn.Module, mlp: nn.Module, input_layernorm: nn.Module,
                 post_attention_layernorm: nn.Module | None = None):
        super().__init__()
        self.input_layernorm = input_layernorm
        self.self_attn = self_attn
        self.post_attention_layernorm = post_attention_layernorm
        self.mlp = mlp
        # sharded branches all-reduce (RowParallelLinear, the MoE block): they stay on one stream, so that every
        # rank issues its collectives in one order
        self.sharded = any(isinstance(getattr(m, "tp", None), TPGroup) and m.tp.size > 1 for m in self.modules())

    def forward(self, x: torch.Tensor | Pending, ctx: ForwardContext) -> Pending:
        x, h = settle(x, self.input_layernorm)
        side = None if self.sharded else branch_stream(h)
        if side is None:
            m = h if self.post_attention_layernorm is None else self.post_attention_layernorm(x)
            attn = self.self_attn(h, ctx)
            return Pending(x, self.mlp(m), attn)      # summed with the next norm
        # the MLP on a second stream beside attention (fork and join are captured into the decode graphs too)
        main = torch.cuda.current_stream(h.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            m = h if self.post_attention_layernorm is None else self.post_attention_layernorm(x)
            mlp = self.mlp(m)
        attn = self.self_attn(h, ctx)
        main.wait_stream(side)
        # h, x and m are freed (or next used) on the main stream after the join, and mlp is next read there before
        # the next fork: the allocator's per-stream reuse stays ordered without record_stream
        return Pending(x, mlp, attn)


# A parallel layer's attention and MLP both read its input: on CUDA, steps of up to BRANCH_MAX_TOKENS tokens run the
# MLP on a second stream. At one decode row attention is a chain of small latency-bound kernels and the MLP two
# weight-streaming GEMVs; side by side, the GEMVs fill the time attention waits. The kernel plan's
# ``parallel_branches`` operation (kernel ``branch_streams``) can keep one stream.
BRANCH_MAX_TOKENS = MANY_PROGRAMS
_branch_streams: dict[int, torch.cuda.Stream] = {}


def branch_stream(h: torch.Tensor) -> torch.cuda.Stream | None:
    """The second stream of ``h``'s device for a parallel layer's MLP, or None to stay on one stream: not CUDA,
    more than ``BRANCH_MAX_TOKENS`` rows, or switched off. (A tensor-parallel layer never asks: its
    ``sharded``.)"""
    if not h.is_cuda or h.shape[0] > BRANCH_MAX_TOKENS or not kernels.allows("branch_streams"):
        return None
    index = h.device.index if h.device.index is not None else torch.cuda.current_device()
    stream = _branch_streams.get(index)
    if stream is None:
        stream = _branch_streams[index] = torch.cuda.Stream(index)
    return stream


class CausalLM(nn.Module):
    """embed_tokens -> layers -> norm -> lm_head; families supply the layers and the final norm.

    The engine calls ``forward(input_ids, ctx) -> hidden [T, H]`` and ``compute_logits(hidden) -> [n, V]``
    (only on the rows it samples). Override ``embed`` for learned positions or projections (OPT). ``tp``: the
    tensor-parallel group the embedding and lm_head are split over by vocabulary rows (None: one process).
    ``exact_prefill``: the family turns on the opt-in kernel ``exact_sdpa`` (whole prompts attended as
    transformers attends them; Mixtral sets it, for its routes' near-ties). ``kernel_ops``: the family's own
    operations and their kernels (ops/plan.py's ``OPS`` form), planned with the core's. ``kernel_plan``: the
    engine's plan (``set_kernel_plan``), open during every forward (the runner opens it around ``compute_logits`` too).
    """

    exact_prefill = False
    kernel_ops: dict[str, tuple[Kernel, ...]] = {}

    def __init__(self, vocab_size: int, hidden_size: int, layers: list[nn.Module], norm: nn.Module,
                 tie_word_embeddings: bool = False, lm_head_bias: bool = False, tp: TPGroup | None = None):
        super().__init__()
        self.embed_tokens = vocab_embedding(vocab_size, hidden_size, tp)
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.lm_head = vocab_linear(hidden_size, vocab_size, lm_head_bias, tp)
        if tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def embed(self, input_ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    @classmethod
    def family_kernels_on(cls) -> tuple[str, ...]:
        """The opt-in kernels this family turns on."""
        return ("exact_sdpa",) if cls.exact_prefill else ()

    @property
    def kernel_plan(self) -> KernelPlan:
        plan = self.__dict__.get("_kernel_plan")
        if plan is None:           # built without an engine (tests, tools): "auto" with the family's choices
            plan = kernels.default_plan(tuple(self.kernel_ops.items()), self.family_kernels_on())
        return plan

    def set_kernel_plan(self, plan: KernelPlan) -> None:
        self.__dict__["_kernel_plan"] = plan

    def forward(self, input_ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        with kernels.plan_scope(self.kernel_plan):
            h = self.embed(input_ids, ctx)
            for layer in self.layers:
                h = layer(h, ctx)
            return settle(h, self.norm)[1]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)


def gated_mlp_rules(bias: bool = False) -> list[Rule]:
    """HF ``mlp.{gate,up,down}_proj`` -> GatedMLP (gate and up fused into one GEMM)."""
    L, T = "model.layers.{i}.mlp.", "layers.{i}.mlp."
    rules = []
    for kind in ["weight"] + (["bias"] if bias else []):
        rules += fused([L + f"gate_proj.{kind}", L + f"up_proj.{kind}"], T + "gate_up_proj." + kind)
        rules.append(Rule(L + f"down_proj.{kind}", T + "down_proj." + kind))
    return rules


def prenorm_decoder_weight_map(mlp_rules: list[Rule], tie_word_embeddings: bool, qkv_bias: bool = False,
                               o_bias: bool = False) -> WeightMap:
    """The weight map of a CausalLM of PreNormDecoderLayers over RotaryAttention, from the HF Llama naming
    (``model.embed_tokens``, ``model.layers.{i}.self_attn.{q,k,v,o}_proj``, ``input_layernorm``,
    ``post_attention_layernorm``, ``model.norm``, ``lm_head``) plus the family's MLP rules."""
    L, T = "model.layers.{i}.", "layers.{i}."
    rules = [Rule("model.embed_tokens.weight", "embed_tokens.weight"),
             Rule("model.norm.weight", "norm.weight"),
             Rule(L + "input_layernorm.weight", T + "input_layernorm.weight"),
             Rule(L + "post_attention_layernorm.weight", T + "post_attention_layernorm.weight"),
             *mlp_rules]
    for kind, fused_qkv, o in (("weight", True, True), ("bias", qkv_bias, o_bias)):
        if fused_qkv:
            rules += fused([L + f"self_attn.{p}_proj.{kind}" for p in "qkv"], T + "self_attn.qkv_proj." + kind)
        if o:
            rules.append(Rule(L + f"self_attn.o_proj.{kind}", T + "self_attn.o_proj." + kind))
    ignore = [r"rotary_emb\.inv_freq$"]          # recomputed from rope_theta; old checkpoints saved it
    if tie_word_embeddings:
        ignore.append(r"^lm_head\.weight$")     # shares embed_tokens' tensor; checkpoints may store a copy
    else:
        rules.append(Rule("lm_head.weight", "lm_head.weight"))
    return WeightMap(rules, ignore)


def ungroup_qkv(t: torch.Tensor, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """A fused QKV weight [rows, in] or bias [rows] whose rows are grouped per KV head, [q_0..q_{g-1}, k, v]
    for each of the ``num_kv_heads`` groups, reordered to the [Q; K; V] rows ``qkv_proj`` expects. With one
    query head per group (``num_kv_heads`` = the number of heads) that is the per-head [q_h, k_h, v_h]
    layout of GPT-NeoX's ``query_key_value``; with more, Falcon-40B's. Use it as a ``Rule``'s transform:
    ``Rule(src, "layers.{i}.self_attn.qkv_proj.weight", transform=functools.partial(ungroup_qkv,
    num_kv_heads=..., head_dim=...))``.

    Query heads keep their group-major order, so query head ``j`` reads KV head ``j // g``, which is what
    the shared attention's grouped-query attention gives.
    """
    rows = t.shape[0]
    if rows % (num_kv_heads * head_dim) or rows // (num_kv_heads * head_dim) < 3:
        raise ValueError(f"a fused QKV tensor of {rows} rows cannot be {num_kv_heads} KV groups of "
                         f"[q.., k, v] heads of {head_dim} rows each")
    rest = t.shape[1:]
    groups = t.reshape(num_kv_heads, -1, head_dim, *rest)          # [kv, g + 2, D, ...]
    q = groups[:, :-2].reshape(-1, *rest)
    k = groups[:, -2].reshape(-1, *rest)
    v = groups[:, -1].reshape(-1, *rest)
    return torch.cat([q, k, v], dim=0)
