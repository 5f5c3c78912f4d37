"""bf16/fp16 on CUDA: teacher-forced top-1 agreement with transformers >= 99% for every installed family.

Configs are moderately sized with a small vocabulary: with random weights the logits are nearly flat, and
the fewer the candidates the wider the top-1 margin, so the comparison measures our kernels rather than
bf16 rounding on near-ties (vocab 2048 put two correct bf16 implementations at 98.9% on mistral-window;
256 puts it at 99.2%, measured on an H200).
"""
import pytest
import torch

from agreement import agreement, sharpen_router
from fastgen_core.registry import FamilyRegistry
from fastgen_core.testing import save_tiny_model

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _configs():
    import transformers as t
    common = dict(vocab_size=256, hidden_size=512, num_hidden_layers=2, num_attention_heads=8,
                  max_position_embeddings=1024)
    return {
        "llama-gqa": lambda: t.LlamaConfig(**common, intermediate_size=1024, num_key_value_heads=2),
        "mistral-window": lambda: t.MistralConfig(**common, intermediate_size=1024, num_key_value_heads=2,
                                                  sliding_window=48),
        "qwen2": lambda: t.Qwen2Config(**common, intermediate_size=1024, num_key_value_heads=2),
        "phi": lambda: t.PhiConfig(**{**common, "hidden_size": 640}, intermediate_size=1280,
                                   partial_rotary_factor=0.4),
        "mixtral": lambda: t.MixtralConfig(**common, intermediate_size=512, num_key_value_heads=2,
                                           num_local_experts=8, num_experts_per_tok=2),
        "falcon-7b-style": lambda: t.FalconConfig(vocab_size=256, hidden_size=512, num_hidden_layers=2,
                                                  num_attention_heads=8, multi_query=True, parallel_attn=True,
                                                  bias=False, new_decoder_architecture=False, alibi=False),
        "falcon-40b-style": lambda: t.FalconConfig(vocab_size=256, hidden_size=512, num_hidden_layers=2,
                                                   num_attention_heads=8, num_kv_heads=2,
                                                   new_decoder_architecture=True, bias=False, alibi=False),
        "gptneox-pythia-style": lambda: t.GPTNeoXConfig(**common, intermediate_size=2048, rotary_pct=0.25,
                                                        use_parallel_residual=True),
        "opt": lambda: t.OPTConfig(vocab_size=256, hidden_size=512, num_hidden_layers=2, num_attention_heads=8,
                                   ffn_dim=1024, word_embed_proj_dim=512, max_position_embeddings=1024),
    }


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(_configs()))
def test_teacher_forced_agreement(name, dtype, tmp_path):
    """Random weights give flat logits: transformers' own bf16 run agrees with its float32 run on only
    95-98% of positions (tools/agreement_sweep.py, docs/bench-results/agreement-sweep-h200.txt), so
    agreement between two correct bf16 implementations is bounded by rounding on near-ties. Asserted:
    >= 99% on every position and on the positions where bf16 rounding does not flip transformers' own
    answer (a real bug lands far below: a wrong layer, rotary or cache read gives ~0-50%), and we are no
    further from the float32 answer than transformers' own half-precision run."""
    cfg = _configs()[name]()
    reg = FamilyRegistry()
    if cfg.model_type not in {mt for rf in reg.families for mt in rf.family.model_types}:
        pytest.skip(f"no installed family plugin serves model_type {cfg.model_type!r}")
    model = save_tiny_model(cfg, tmp_path, init_std=0.02)
    if name == "mixtral":
        sharpen_router(model, tmp_path)
    r = agreement(tmp_path, cfg, "cuda", dtype, num_seqs=16)
    print(f"AGREEMENT {name} {dtype} {r}")
    assert r["ours_vs_hf_on_stable"] >= 0.99, f"{name} {dtype}: top-1 agreement {r}"
    # the bar, 99% on every position, for every family (bf16 Mixtral too, since its experts sum the
    # top-k contributions in float32 as transformers does: 98.4% before on an H200)
    assert r["ours_vs_hf"] >= 0.99, f"{name} {dtype}: top-1 agreement {r}"
    assert r["ours_vs_hf_fp32"] >= r["hf_vs_hf_fp32"] - 0.01, f"{name} {dtype}: {r}"
