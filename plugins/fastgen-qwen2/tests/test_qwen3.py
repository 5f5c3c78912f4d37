"""Qwen3 (dense) through the same plugin: per-head q/k RMSNorm before the rotation, head_dim apart from
hidden_size / heads, attention biases only when asked; greedy tokens equal transformers' (check_family)."""
import pytest
from transformers import Qwen3Config

from fastgen_core.testing import check_family


def tiny_qwen3(**kw):
    base = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, head_dim=32,
                num_hidden_layers=2, vocab_size=128, max_position_embeddings=512, rope_theta=1000000.0)
    return Qwen3Config(**{**base, **kw})


def test_qwen3_gqa_qk_norm_matches_transformers(tmp_path):
    report = check_family(tiny_qwen3(), tmp_path, num_prompts=12, init_std=0.1)
    assert report.preemptions > 0


@pytest.mark.parametrize("kw", [dict(attention_bias=True, tie_word_embeddings=True, num_key_value_heads=1),
                                dict(use_sliding_window=True, sliding_window=16, max_window_layers=1)])
def test_qwen3_biases_tied_mqa_and_sliding_window(tmp_path, kw):
    check_family(tiny_qwen3(**kw), tmp_path, num_prompts=10, budgets=(7, 64), init_std=0.1)
