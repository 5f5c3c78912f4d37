"""Benchmark workloads and model presets.

The workload is the FastGen paper's offline scenario (and hf_baseline.py's): N requests, prompt lengths
~ Normal(mean_p, 0.3 mean_p), generation lengths ~ Normal(mean_g, 0.3 mean_g), random token ids, fixed
seed. Generation lengths are forced (ignore_eos, min = max), so every engine produces the same tokens count.

Presets are config.json files at real architecture sizes, written locally (no hub access), to run with
``load_format="dummy"`` (random weights: speed does not depend on the values).
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


def _preset_configs() -> dict:
    from transformers import FalconConfig, GPTNeoXConfig, LlamaConfig, MixtralConfig, PhiConfig
    return {
        "phi-2": PhiConfig(vocab_size=51200, hidden_size=2560, intermediate_size=10240, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=32, partial_rotary_factor=0.4,
                           max_position_embeddings=2048, rope_theta=10000.0, hidden_act="gelu_new",
                           layer_norm_eps=1e-5, tie_word_embeddings=False),
        "falcon-7b": FalconConfig(vocab_size=65024, hidden_size=4544, num_hidden_layers=32, num_attention_heads=71,
                                  multi_query=True, parallel_attn=True, bias=False, new_decoder_architecture=False,
                                  alibi=False, max_position_embeddings=2048),
        "llama-2-7b": LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                  num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                                  rms_norm_eps=1e-5),
        # Mixtral-8x7B block shapes with 8 of its 32 layers, so it fits one 80 GB card in bf16 (11.9B)
        "mixtral-small": MixtralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                                       num_hidden_layers=8, num_attention_heads=32, num_key_value_heads=8,
                                       num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=4096),
        # Falcon-40B (new decoder architecture: grouped KV heads, two layernorms): 83.7 GB in bf16, one H200
        "falcon-40b": FalconConfig(vocab_size=65024, hidden_size=8192, num_hidden_layers=60, num_attention_heads=128,
                                   num_kv_heads=8, new_decoder_architecture=True, parallel_attn=True, bias=False,
                                   alibi=False, max_position_embeddings=2048),
        # the whole Mixtral-8x7B (46.7B, 93 GB in bf16): fits one H200
        "mixtral-8x7b": MixtralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                      num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=32768),
        # EleutherAI/pythia-1b: parallel residual, a quarter of each 256-channel head rotated
        "pythia-1b": GPTNeoXConfig(vocab_size=50304, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                   num_attention_heads=8, rotary_pct=0.25, rotary_emb_base=10000,
                                   use_parallel_residual=True, hidden_act="gelu", layer_norm_eps=1e-5,
                                   max_position_embeddings=2048, tie_word_embeddings=False),
        # CPU smoke tests
        "tiny-llama": LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024),
    }


PRESETS = ("phi-2", "falcon-7b", "falcon-40b", "llama-2-7b", "mixtral-small", "mixtral-8x7b", "pythia-1b", "tiny-llama")


def write_preset(name: str, directory: str | Path, num_layers: int | None = None) -> Path:
    """Write ``directory/config.json`` for preset ``name`` and return the directory."""
    configs = _preset_configs()
    if name not in configs:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(configs)}")
    cfg = configs[name]
    if num_layers is not None:
        cfg.num_hidden_layers = num_layers
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    data = cfg.to_dict()
    data["architectures"] = [type(cfg).__name__.replace("Config", "ForCausalLM")]
    data.setdefault("dtype", "bfloat16")
    (d / "config.json").write_text(json.dumps(data, indent=1))
    return d
