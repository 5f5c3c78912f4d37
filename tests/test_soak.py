"""Engine soak: a long random mix of arrivals, aborts, bad requests, greedy and seeded sampling, stop
strings and min/max tokens, through a small KV cache (preemption), with prefix caching on and off, the step
loop synchronous and asynchronous (one step ahead), and the CUDA-graph decode path's padded buffers (without
capture). Every request that was not aborted finishes
with exactly the tokens it gets when run alone, bad requests are refused without disturbing anything, and
no KV block leaks. FASTGEN_SOAK_STEPS makes it longer (default 400 steps: ~15 s on CPU)."""
import os
import random

import pytest

from fastgen_core import InvalidRequestError, SamplingParams, pipeline

STEPS = int(os.environ.get("FASTGEN_SOAK_STEPS", "400"))


def _random_request(rng: random.Random, vocab: int):
    shared = [7, 8, 9, 10] * 6                       # a common prefix for the prefix cache to find
    prompt = (shared if rng.random() < 0.5 else []) + [rng.randrange(4, vocab) for _ in range(rng.randint(1, 40))]
    kind = rng.choice(["greedy", "seeded", "stop", "min"])
    p = dict(max_new_tokens=rng.randint(1, 24))
    if kind == "seeded":
        p.update(do_sample=True, temperature=rng.choice([0.7, 1.0, 1.3]), top_k=rng.choice([0, 5]),
                 top_p=rng.choice([1.0, 0.9]), seed=rng.randrange(1 << 20))
    elif kind == "stop":
        p.update(stop=[rng.choice(["a", "b", "c", "xy"])])
    else:
        p.update(min_new_tokens=rng.randint(0, p["max_new_tokens"]))
    return prompt, p


BAD = [("", {}), ([], {}), ([1, 2, 10 ** 6], {}), ([1, 2], {"max_new_tokens": 10 ** 6}),
       ([1, 2], {"min_new_tokens": 5, "max_new_tokens": 2}), ([1] * 300, {})]


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("prefix_caching", [False, True], ids=["plain", "prefix-cache"])
def test_soak_random_traffic(tiny_model_dir, prefix_caching, async_scheduling):
    path, _ = tiny_model_dir
    rng = random.Random(1234 + prefix_caching)
    p = pipeline(str(path), device="cpu", max_ragged_batch_size=48, max_ragged_sequence_count=12,
                 kv_block_size=4, num_kv_blocks=60, enable_prefix_caching=prefix_caching,
                 async_scheduling=async_scheduling)
    eng = p.engine
    eng.runner.enable_decode_graphs(6, eng.max_context, capture=False)
    vocab = eng.model_config.vocab_size
    submitted, aborted, finished = {}, set(), {}
    for step in range(STEPS):
        if rng.random() < 0.35:
            prompt, params = _random_request(rng, vocab)
            rid = eng.add_request(prompt, SamplingParams(**params))
            submitted[rid] = (prompt, params)
        if rng.random() < 0.05:
            bad_prompt, bad_params = rng.choice(BAD)
            with pytest.raises(InvalidRequestError):
                eng.add_request(bad_prompt, SamplingParams(**bad_params))
        if rng.random() < 0.04 and eng.requests:
            rid = rng.choice(sorted(eng.requests))
            assert eng.abort(rid)
            aborted.add(rid)
        for out in eng.step():
            if out.finished:
                finished[out.request_id] = out.response
    while eng.has_unfinished():
        for out in eng.step():
            if out.finished:
                finished[out.request_id] = out.response
    st = eng.stats()
    assert st["kv_blocks_used"] == 0 and not eng.requests
    assert set(finished) == set(submitted) - aborted
    assert st["preemptions"] > 0 and st["graph_steps"] > 0 and len(aborted) > 0
    if prefix_caching:
        assert st["prefix_cache_hit_tokens"] > 0
    p.destroy()
    # the oracle: each request alone on a fresh engine
    alone = pipeline(str(path), device="cpu", kv_block_size=4)
    for rid, resp in finished.items():
        prompt, params = submitted[rid]
        want = alone(prompt, **params)[0]
        assert resp.token_ids == want.token_ids, f"{rid} {params}: {resp.token_ids} != alone {want.token_ids}"
        assert resp.finish_reason == want.finish_reason and resp.generated_text == want.generated_text
    alone.destroy()
