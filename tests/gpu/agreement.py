"""Teacher-forced top-1 agreement of our engine with transformers, through the real ragged path.

Each sequence is fed as a prompt in three pieces: a first chunk (fresh prefill), a second chunk (prefill
that reads the cache), then one token per step (decodes), with all sequences of a step in one ragged
batch. The logits of every position are compared with transformers' forward over the whole sequence.
"""
from __future__ import annotations

import torch

from fastgen_core.config import EngineConfig
from fastgen_core.engine.batch import prepare_batch
from fastgen_core.engine.engine import LLMEngine
from fastgen_core.engine.scheduler import ScheduledBatch, ScheduledChunk
from fastgen_core.engine.sequence import Sequence


@torch.inference_mode()
def our_logits(engine: LLMEngine, seqs: list[list[int]], first: int, second: int) -> list[torch.Tensor]:
    """[len(seq), vocab] float32 logits per sequence (position i predicts token i + 1)."""
    bs = engine.allocator.block_size
    objs = []
    for i, ids in enumerate(seqs):
        s = Sequence(i, f"t{i}", list(ids), 1)
        s.block_table = engine.allocator.allocate(engine.allocator.blocks_for(len(ids)))
        objs.append(s)
    out = [[] for _ in seqs]
    # step plan: (start, length) per sequence; all sequences advance together
    plan = [(0, first), (first, second)] + [(p, 1) for p in range(first + second, len(seqs[0]))]
    for start, n in plan:
        batch = ScheduledBatch([ScheduledChunk(s, start, n, False) for s in objs])
        pb = prepare_batch(batch, bs, engine.runner.kv_caches, engine.device)
        hidden = engine.model(pb.input_ids, pb.ctx)
        logits = engine.model.compute_logits(hidden).float()
        for i in range(len(objs)):
            out[i].append(logits[i * n:(i + 1) * n])
    for s in objs:
        engine.allocator.free(s.block_table)
    return [torch.cat(o) for o in out]


@torch.no_grad()
def sharpen_router(model, save_dir, scale: float = 16.0) -> None:
    """Scale a saved MoE model's router weights and save it again: random near-tied router logits make
    bf16 rounding pick other experts, where a trained router is decisive."""
    for n, p in model.named_parameters():
        if n.endswith("mlp.gate.weight"):
            p.mul_(scale)
    model.save_pretrained(save_dir)


@torch.inference_mode()
def hf_logits(model, seqs: list[list[int]]) -> list[torch.Tensor]:
    ids = torch.tensor(seqs, device=model.device)
    return list(model(ids).logits.float())


def agreement(model_dir, hf_config, device: str, dtype: torch.dtype, num_seqs: int = 4, length: int = 160,
              first: int = 100, second: int = 40, seed: int = 0) -> dict:
    from transformers import AutoModelForCausalLM
    g = torch.Generator().manual_seed(seed)
    seqs = torch.randint(0, hf_config.vocab_size, (num_seqs, length), generator=g).tolist()
    engine = LLMEngine(EngineConfig(str(model_dir), device=device, dtype=dtype, num_kv_blocks=256,
                                    kv_block_size=16))
    ours = our_logits(engine, seqs, first, second)
    del engine
    ref32 = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(device).eval()
    theirs32 = hf_logits(ref32, seqs)
    del ref32
    ref = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()
    theirs = hf_logits(ref, seqs)
    del ref
    a = torch.cat([x.argmax(-1) for x in ours])
    b = torch.cat([x.argmax(-1) for x in theirs])
    c = torch.cat([x.argmax(-1) for x in theirs32])
    stable = b == c          # positions where bf16 rounding does not flip transformers' own answer
    return {"ours_vs_hf": (a == b).float().mean().item(), "ours_vs_hf_fp32": (a == c).float().mean().item(),
            "ours_vs_hf_on_stable": (a == b)[stable].float().mean().item(),
            "hf_vs_hf_fp32": (b == c).float().mean().item(), "positions": a.numel(),
            "max_abs_logit_diff": max((x - y).abs().max().item() for x, y in zip(ours, theirs))}
