"""Qwen2 against transformers: greedy tokens equal, first-token logits within 1e-4 (check_family), and
the config semantics (which layers slide) equal transformers' own Qwen2Config."""
import pytest
from transformers import Qwen2Config as HFQwen2Config

from fastgen_core import UnsupportedModelError
from fastgen_core.testing import check_family
from fastgen_qwen2.model import Qwen2Config


def tiny_qwen2(**kw):
    base = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                num_hidden_layers=2, vocab_size=128, max_position_embeddings=512, rope_theta=1000000.0)
    return HFQwen2Config(**{**base, **kw})


def test_qwen2_gqa_untied_matches_transformers(tmp_path):
    report = check_family(tiny_qwen2(), tmp_path, num_prompts=12)
    assert report.preemptions > 0


def test_qwen2_tied_embeddings_mqa_sharded(tmp_path):
    # Qwen2.5-0.5B-style: tied lm_head (absent from the checkpoint), one KV head
    check_family(tiny_qwen2(tie_word_embeddings=True, num_key_value_heads=1), tmp_path, num_prompts=12, shards=2)


def test_qwen2_sliding_window_on_upper_layers(tmp_path):
    # layer 0 full attention, layer 1 a 16-token window; prompts go up to 200 tokens, far past the window
    cfg = tiny_qwen2(use_sliding_window=True, sliding_window=16, max_window_layers=1)
    assert cfg.layer_types == ["full_attention", "sliding_attention"]
    check_family(cfg, tmp_path, num_prompts=12)


@pytest.mark.parametrize("kw", [
    dict(),
    dict(use_sliding_window=True, sliding_window=16, max_window_layers=2),
    dict(use_sliding_window=True, sliding_window=16, max_window_layers=0),
    dict(use_sliding_window=False, sliding_window=16, max_window_layers=0),
    dict(use_sliding_window=True, sliding_window=8, layer_types=["sliding_attention", "full_attention",
                                                                 "sliding_attention", "full_attention"]),
])
def test_layer_windows_follow_transformers(kw):
    hf = HFQwen2Config(hidden_size=64, num_attention_heads=4, num_hidden_layers=4, intermediate_size=128,
                       vocab_size=128, **kw)
    ours = Qwen2Config.from_hf(hf.to_dict())
    want = [hf.sliding_window if t == "sliding_attention" else None for t in hf.layer_types]
    assert [ours.layer_sliding_window(i) for i in range(4)] == want


def test_old_config_json_without_layer_types():
    # Qwen2.5 releases ship use_sliding_window/max_window_layers but no layer_types
    hf = tiny_qwen2(num_hidden_layers=4).to_dict()
    del hf["layer_types"]
    hf.update(use_sliding_window=True, sliding_window=32, max_window_layers=3)
    c = Qwen2Config.from_hf(hf)
    assert [c.layer_sliding_window(i) for i in range(4)] == [None, None, None, 32]
    hf["use_sliding_window"] = False
    assert Qwen2Config.from_hf(hf).sliding_window is None


def test_unsupported_variants_are_refused_clearly():
    hf = tiny_qwen2().to_dict()
    with pytest.raises(UnsupportedModelError, match="chunked_attention"):
        Qwen2Config.from_hf({**hf, "layer_types": ["full_attention", "chunked_attention"]})
    with pytest.raises(UnsupportedModelError, match="3 layer_types for num_hidden_layers=2"):
        Qwen2Config.from_hf({**hf, "layer_types": ["full_attention"] * 3})
    with pytest.raises(UnsupportedModelError, match="yarn"):
        Qwen2Config.from_hf({**hf, "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6,
                                                       "original_max_position_embeddings": 128}})
