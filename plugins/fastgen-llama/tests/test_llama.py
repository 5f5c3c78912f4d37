import pytest
from transformers import LlamaConfig, MistralConfig

from fastgen_core.testing import check_family


def tiny_llama(**kw):
    base = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                num_hidden_layers=2, vocab_size=128, max_position_embeddings=512)
    return LlamaConfig(**{**base, **kw})


@pytest.mark.parametrize("shards", [1, 3])
def test_llama_gqa_matches_transformers(tmp_path, shards):
    report = check_family(tiny_llama(), tmp_path, shards=shards)
    assert report.preemptions > 0


def test_llama_tied_embeddings_bin_checkpoint(tmp_path):
    check_family(tiny_llama(tie_word_embeddings=True, num_key_value_heads=4), tmp_path, safe=False, num_prompts=12)


def test_llama3_rope_scaling(tmp_path):
    cfg = tiny_llama(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                     rope_theta=500000.0)
    check_family(cfg, tmp_path, num_prompts=12)


def test_mistral_sliding_window(tmp_path):
    cfg = MistralConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=1, intermediate_size=128,
                        num_hidden_layers=2, vocab_size=128, max_position_embeddings=512, sliding_window=24,
                        head_dim=16)
    check_family(cfg, tmp_path)
