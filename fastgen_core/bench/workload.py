"""Benchmark workloads, and the model presets written as model directories.

The workload is the FastGen paper's offline scenario (and hf_baseline.py's): N requests, prompt lengths
~ Normal(mean_p, 0.3 mean_p), generation lengths ~ Normal(mean_g, 0.3 mean_g), random token ids, fixed
seed. Generation lengths are forced (ignore_eos, min = max), so every engine produces the same tokens count.

Presets are config.json files at real architecture sizes, written locally (no hub access), to run with
``load_format="dummy"`` (random weights: speed does not depend on the values). The family plugins supply them
(the ``register_bench_presets`` hook, fastgen_core.presets): the core names no family.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Workload:
    prompts: list[list[int]]
    gen_lens: list[int]
    mean_prompt: int
    mean_gen: int
    seed: int

    @property
    def prompt_tokens(self) -> int:
        return sum(map(len, self.prompts))

    @property
    def gen_tokens(self) -> int:
        return sum(self.gen_lens)


def make_workload(n: int, mean_prompt: int, mean_gen: int, seed: int = 0, vocab_size: int = 50000,
                  max_context: int | None = None, shared_prefix: int = 0) -> Workload:
    """Same draws as hf_baseline.workload for the same arguments (so numbers are comparable).

    ``shared_prefix`` > 0: the first ``shared_prefix`` tokens of every prompt (all but its last token, if it
    is shorter) are one common random prefix, like a system prompt; lengths are unchanged."""
    if n < 1 or mean_prompt < 1 or mean_gen < 1:
        raise ValueError(f"num_requests, prompt mean and generation mean must be >= 1, got {n}, {mean_prompt}, "
                         f"{mean_gen}")
    import torch   # here, not at import: `fastgen --help` builds this parser and should stay quick
    g = torch.Generator().manual_seed(seed)
    ps = (torch.randn(n, generator=g) * 0.3 * mean_prompt + mean_prompt).round().clamp(min=8).long().tolist()
    gs = (torch.randn(n, generator=g) * 0.3 * mean_gen + mean_gen).round().clamp(min=4).long().tolist()
    if max_context is not None:
        gs = [min(x, max_context // 4) for x in gs]
        ps = [min(p, max_context - x - 1) for p, x in zip(ps, gs)]
    lo = min(100, vocab_size // 2)
    prompts = [torch.randint(lo, min(50000, vocab_size), (p,), generator=g).tolist() for p in ps]
    if shared_prefix < 0:
        raise ValueError(f"shared_prefix must be >= 0, got {shared_prefix}")
    if shared_prefix:
        g2 = torch.Generator().manual_seed(seed + 1)
        prefix = torch.randint(lo, min(50000, vocab_size), (shared_prefix,), generator=g2).tolist()
        prompts = [prefix[:min(shared_prefix, len(q) - 1)] + q[min(shared_prefix, len(q) - 1):] for q in prompts]
    return Workload(prompts, gs, mean_prompt, mean_gen, seed)


def write_preset(name: str, directory: str | Path, num_layers: int | None = None) -> Path:
    """Write ``directory/config.json`` for preset ``name`` (registered by a family plugin, see
    fastgen_core.presets) and return the directory."""
    from ..presets import preset_config
    data = preset_config(name, num_layers)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    data.setdefault("dtype", "bfloat16")
    (d / "config.json").write_text(json.dumps(data, indent=1))
    return d
