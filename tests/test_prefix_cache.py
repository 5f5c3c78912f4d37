"""Prefix caching end to end: prompts sharing a long prefix (a system prompt) give transformers' greedy
tokens, and the shared blocks are computed once."""
from fastgen_core import pipeline
from fastgen_core.testing import hf_greedy, random_prompts


def test_shared_system_prompt_is_computed_once_and_answers_match_transformers(tiny_model_dir):
    path, ref = tiny_model_dir
    system = random_prompts(1, 128, 90, 90, seed=11)[0]
    tails = random_prompts(6, 128, 1, 20, seed=12)
    prompts = [system + t for t in tails]
    want = [hf_greedy(ref, q, 8) for q in prompts]
    p = pipeline(str(path), device="cpu", max_ragged_batch_size=64, kv_block_size=8, enable_prefix_caching=True)
    first = p(prompts[:1], max_new_tokens=8, ignore_eos=True)
    computed_first = p.engine.counters["prompt_tokens"]
    rest = p(prompts[1:], max_new_tokens=8, ignore_eos=True)
    assert [o.token_ids for o in first + rest] == want
    st = p.engine.stats()
    # every later prompt found the system prompt's 11 full blocks (88 tokens) cached
    assert st["prefix_cache_hit_tokens"] >= 5 * 88
    assert st["prompt_tokens"] - computed_first <= sum(len(q) for q in prompts[1:]) - 5 * 88
    assert st["kv_blocks_used"] == 0 and st["prefix_cache_blocks"] > 0
    p.destroy()


def test_prefix_caching_is_off_by_default_and_validated(tiny_model_dir, tmp_path):
    import pytest
    from fastgen_core.config import EngineConfig
    from fastgen_core.errors import ConfigError
    for on in (False, True):
        p = pipeline(str(tiny_model_dir[0]), device="cpu", kv_block_size=8, enable_prefix_caching=on)
        for _ in range(2):
            p([[5, 6, 7] * 20], max_new_tokens=2)
        assert (p.engine.stats()["prefix_cache_hit_tokens"] > 0) == on
        p.destroy()
    with pytest.raises(ConfigError, match="enable_prefix_caching must be true or false, got 'yes'"):
        EngineConfig(str(tmp_path), enable_prefix_caching="yes")
