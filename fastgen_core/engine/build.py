"""Building what an engine runs from an EngineConfig: the family and its config, the model with its weights
on the device, the KV cache's size, and the ModelRunner that owns cache and forward. A tensor-parallel
worker builds exactly this (``build_runner``); rank 0 also gets the tokenizer and the end-of-sequence ids.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import distributed, kernels, snapshot
from ..config import EngineConfig
from ..errors import ConfigError, FastgenError, ResourceError
from ..layers.attention import PagedAttention
from ..layers.sharded import TPGroup, kv_head_shard, split_size
from ..loader import (checkpoint_files, init_dummy_weights, iter_tensors, load_weights, read_hf_config,
                      skip_parameter_init)
from ..registry import FamilyRegistry, RegisteredFamily
from .kv_cache import gpu_kv_budget
from .runner import ModelRunner

log = logging.getLogger("fastgen.engine")

TP_TIMEOUT_S = 300      # a tensor-parallel collective (or the group's start-up) waiting longer than this fails
# GPU memory kept out of the KV cache besides the weights: activations of a full ragged batch (per token,
# ~40 hidden-sized values live at once in a layer plus float32 logits and their softmax over the vocabulary)
# and a fixed reserve for the CUDA context, cuBLAS workspaces and the decode graphs' pool
ACTIVATION_VALUES_PER_TOKEN = 40
LOGIT_BYTES_PER_TOKEN_PER_VOCAB = 8
FIXED_RESERVE_BYTES = 512 << 20


@dataclass
class ModelSource:
    """What config.json and the model directory say: the family that serves it and its parsed config."""

    path: Path
    hf_config: dict
    snapshot: dict | None
    family: RegisteredFamily
    model_config: object


@dataclass
class RunnerParts:
    """A built model: its runner (KV cache, forward) and what sizing it took."""

    source: ModelSource
    device: torch.device
    dtype: torch.dtype
    max_context: int
    model: nn.Module
    runner: ModelRunner
    tp: TPGroup


def read_source(config: EngineConfig, registry: FamilyRegistry) -> ModelSource:
    path = Path(config.model)
    hf_config = read_hf_config(path)
    meta = snapshot.read_meta(path) if config.load_format in ("auto", "snapshot") else None
    if config.load_format == "snapshot" and meta is None:
        raise ConfigError(f"load_format='snapshot' but {path} is not a fastgen snapshot (no {snapshot.META}); "
                          "make one with engine.save_snapshot(dir) or `fastgen snapshot`")
    family = config.family
    if meta is not None:
        if family is not None and family != meta["family"]:
            raise ConfigError(f"{path} is a snapshot of a {meta['family']!r} model, not {family!r}")
        family = meta["family"]
    resolved = registry.resolve(hf_config, path, family)
    return ModelSource(path, hf_config, meta, resolved, _parse_config(resolved, hf_config, path))


def _parse_config(resolved: RegisteredFamily, hf_config: dict, path: Path):
    name = resolved.family.name
    try:
        return resolved.family.load_config_class().from_hf(hf_config)
    except KeyError as e:
        raise ConfigError(f"{path / 'config.json'} lacks {e.args[0]!r}, which the {name!r} family "
                          f"({resolved.dist}) needs") from None
    except (TypeError, ValueError) as e:
        if isinstance(e, FastgenError):
            raise
        raise ConfigError(f"{path / 'config.json'} has a value the {name!r} family ({resolved.dist}) "
                          f"cannot use: {e}") from None


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_runner(config: EngineConfig, source: ModelSource, tp: TPGroup,
                 workers: distributed.Workers | None = None) -> RunnerParts:
    """The model on ``tp``'s device with its weights, and the runner with a KV cache sized from free memory
    (every rank of a tensor-parallel group agrees on the smallest count)."""
    mc = source.model_config
    device = distributed.rank_device(config.torch_device(), tp.rank)
    dtype = config.torch_dtype(source.snapshot["dtype"] if source.snapshot is not None else mc.dtype)
    max_context = min(config.max_context or mc.max_position_embeddings, mc.max_position_embeddings)
    model = _build_model(config, source, device, dtype, tp)
    kv_heads = kv_head_shard(mc.num_key_value_heads, tp)[0]          # on this rank
    plan_kernels(config, model, device, dtype, mc.num_attention_heads // tp.size, kv_heads, mc.head_dim)
    block_size = config.block_size()
    num_blocks = config.num_kv_blocks or _auto_num_blocks(config, mc, device, dtype, kv_heads, block_size,
                                                          max_context)
    if tp.size > 1 and not config.num_kv_blocks:          # every rank's cache holds the same blocks
        n = torch.tensor([num_blocks], device=device)
        torch.distributed.all_reduce(n, op=torch.distributed.ReduceOp.MIN)
        num_blocks = int(n.item())
    runner = ModelRunner(model, mc.num_hidden_layers, kv_heads, mc.head_dim, num_blocks, block_size, device,
                         dtype, tp, workers)
    return RunnerParts(source, device, dtype, max_context, model, runner, tp)


def plan_kernels(config: EngineConfig, model: nn.Module, device: torch.device, dtype: torch.dtype, num_heads: int,
                 num_kv_heads: int, head_dim: int) -> kernels.KernelPlan:
    """The model's kernel plan (ops/plan.py), decided once here from ``config.kernels``, the device, the dtype, the
    model's heads and the family's own operations, and set on the model; logged one line per operation."""
    plan = kernels.plan_for(device.type, str(dtype).removeprefix("torch."), config.kernels,
                            kernels.ModelFacts(num_heads, num_kv_heads, head_dim),
                            extra_ops=getattr(model, "kernel_ops", None),
                            family_on=model.family_kernels_on() if hasattr(model, "family_kernels_on") else ())
    if hasattr(model, "set_kernel_plan"):
        model.set_kernel_plan(plan)
    for line in plan.describe():
        log.info("%s", line)
    return plan


def _build_model(config: EngineConfig, source: ModelSource, device, dtype, tp) -> nn.Module:
    family = source.family.family
    with torch.device(device), _default_dtype(dtype), skip_parameter_init():
        try:
            model = family.load_model_class()(_for_group(source.model_config, tp))
        except (TypeError, ValueError) as e:
            if isinstance(e, FastgenError):
                raise
            raise ConfigError(f"{source.path / 'config.json'}: the {family.name!r} family cannot build a "
                              f"model from these values: {e}") from None
    _check_sharded(model, source, tp)
    model.eval()
    if config.load_format == "dummy":
        init_dummy_weights(model, config.seed)
    elif source.snapshot is not None:
        snapshot.load(model, source.path, source.snapshot)
    else:
        kind, files = checkpoint_files(source.path, config.load_format)
        load_weights(model, family.load_weight_map(source.model_config), iter_tensors(kind, files))
    return model


def _for_group(model_config, tp: TPGroup):
    """The family's config as its model class sees it: under tensor parallelism a copy whose ``tp`` is the
    group, which the family hands its layers (at size 1 the config itself, ``tp`` None)."""
    if tp.size == 1:
        return model_config
    mc = copy.copy(model_config)
    object.__setattr__(mc, "tp", tp)
    return mc


def _check_sharded(model: nn.Module, source: ModelSource, tp: TPGroup) -> None:
    """Under tensor parallelism every attention layer must hold this rank's heads: the KV cache is sized for
    them. A family whose layers were not given the group builds full-size attention; say how to fix it."""
    if tp.size == 1:
        return
    mc = source.model_config
    want = (split_size(mc.num_attention_heads, tp, "num_attention_heads"), kv_head_shard(mc.num_key_value_heads, tp)[0])
    wrong = [m.layer_idx for m in model.modules()
             if isinstance(m, PagedAttention) and (m.num_heads, m.num_kv_heads) != want]
    if wrong:
        rf = source.family
        raise ConfigError(f"the {rf.family.name!r} family ({rf.dist}) built attention layers {wrong} unsharded under "
                          f"tensor_parallel_size={tp.size}: its model must pass tp=config.tp to the shared layers "
                          "(RotaryAttention, GatedMLP, MLP, SparseMoE, CausalLM; docs/writing-a-plugin.md §5); "
                          "or run it with tensor_parallel_size=1")


def _auto_num_blocks(config: EngineConfig, mc, device, dtype, kv_heads: int, block_size: int,
                     max_context: int) -> int:
    per_block = ModelRunner.kv_bytes_per_block(mc.num_hidden_layers, kv_heads, mc.head_dim, block_size, dtype)
    # never more than every sequence slot at full context could use
    cap = -(-config.max_ragged_sequence_count * max_context // block_size)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        per_token = mc.hidden_size * ACTIVATION_VALUES_PER_TOKEN + mc.vocab_size * LOGIT_BYTES_PER_TOKEN_PER_VOCAB
        act = config.max_ragged_batch_size * per_token + FIXED_RESERVE_BYTES
        try:
            budget = gpu_kv_budget(total, free, torch.cuda.memory_reserved(device), config.gpu_memory_fraction,
                                   act, str(device))
        except ValueError as e:
            raise ResourceError(str(e)) from None
    else:
        budget = config.cpu_kv_cache_bytes
    blocks = int(budget // per_block) - 1          # the runner adds one scratch block
    need_one = -(-max_context // block_size)
    if blocks < need_one:
        raise ResourceError(f"not enough memory for the KV cache: {blocks} blocks fit, one full-context sequence "
                            f"needs {need_one}; lower max_context or gpu_memory_fraction's other users, or free "
                            "memory")
    return min(blocks, cap)


def eos_token_ids(path: Path, model_config, tokenizer) -> set[int]:
    """End-of-sequence ids: config.json's, generation_config.json's and the tokenizer's."""
    ids = set(model_config.eos_token_id)
    gen = path / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids |= set([eos] if isinstance(eos, int) else (eos or []))
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def enable_graphs(config: EngineConfig, parts: RunnerParts) -> None:
    """Capture the decode CUDA graphs where they apply (rank 0 starts the other ranks' captures)."""
    from ..layers import paged_decode
    if parts.device.type != "cuda" or not config.cuda_graphs or parts.tp.rank != 0:
        return
    if parts.tp.size > 1 and not config.tp_cuda_graphs:
        log.warning("CUDA graphs off under tensor parallelism: capturing NCCL all-reduces has not been "
                    "measured on GPUs yet (tp_cuda_graphs=True tries it)")
        return
    plan = getattr(parts.model, "kernel_plan", None)
    if not paged_decode.available() or (plan is not None and "paged_decode" not in plan.kept["decode_attention"]):
        # the other decode paths size their tensors on the host
        log.warning("CUDA graphs off: the Triton paged-decode kernel is not available here or not in the kernel plan")
        return
    parts.runner.enable_decode_graphs(min(config.cuda_graph_max_batch, config.max_ragged_sequence_count,
                                          config.max_ragged_batch_size), parts.max_context)
