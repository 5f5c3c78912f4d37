"""Asynchronous scheduling (the engine one step ahead of the forward) gives what the synchronous loop gives:
the same tokens, finish reasons, stop-string cuts, logprobs and logits, under penalties, preemption,
prefix caching and aborts; and it really runs ahead (a step's tokens come out of the next step() call)."""
import pytest
import torch

from fastgen_core import SamplingParams, pipeline

MIX = [  # (prompt, options): every option the sampler and the stop checks read
    ("hello world", dict(max_new_tokens=20)),
    ("abcabc", dict(max_new_tokens=25, stop=["b", "zz"])),
    ([5, 6, 7, 8] * 5, dict(max_new_tokens=12, do_sample=True, temperature=0.8, top_k=7, seed=3)),
    ("the cat", dict(max_new_tokens=16, do_sample=True, top_p=0.9, seed=11, logprobs=3)),
    ("penalised", dict(max_new_tokens=18, repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.4)),
    ([9] * 40, dict(max_new_tokens=10, min_new_tokens=8, return_logits=True)),
    ("eos may come", dict(max_new_tokens=30)),
    ("x", dict(max_new_tokens=1)),
]


def _mix(path):
    """MIX plus requests that end on a stop token and on a stop string in mid-output (taken from what the
    model generates), so both ways of ending early are exercised."""
    p = pipeline(str(path), device="cpu", kv_block_size=4)
    out = p("abcabc", max_new_tokens=25, ignore_eos=True)[0]
    p.destroy()
    return MIX + [("abcabc", dict(max_new_tokens=25, stop_token_ids=[out.token_ids[6]])),
                  ("abcabc", dict(max_new_tokens=25, stop=[out.generated_text[8:10]])),
                  ("abcabc", dict(max_new_tokens=25, stop=[out.generated_text[4:6]], min_new_tokens=9))]


def _run(path, async_scheduling, mix, **engine):
    p = pipeline(str(path), device="cpu", kv_block_size=4, async_scheduling=async_scheduling, **engine)
    try:
        outs = p([q for q, _ in mix[:1]], **mix[0][1])          # warm: one request alone
        eng = p.engine
        ids = [eng.add_request(q, SamplingParams(**o)) for q, o in mix]
        done = {}
        while eng.has_unfinished():
            for out in eng.step():
                if out.finished:
                    done[out.request_id] = out.response
        assert eng.stats()["kv_blocks_used"] == 0 and not eng.requests
        return outs + [done[i] for i in ids], eng.stats()
    finally:
        p.destroy()


def _same(a, b):
    """Tokens, text and finish reason exactly; logprobs and logits to float32 batching noise (another step
    split puts a row in GEMMs of another size, as two synchronous runs with other budgets do)."""
    assert a.token_ids == b.token_ids
    assert a.finish_reason == b.finish_reason and a.generated_text == b.generated_text
    if a.logprobs is not None:
        assert [x.token_id for x in a.logprobs] == [x.token_id for x in b.logprobs]
        assert [[t for t, _ in x.top] for x in a.logprobs] == [[t for t, _ in x.top] for x in b.logprobs]
        assert torch.allclose(torch.tensor([x.logprob for x in a.logprobs]),
                              torch.tensor([x.logprob for x in b.logprobs]), atol=1e-4)
    if a.logits is not None:
        assert len(a.logits) == len(b.logits)
        assert all(torch.allclose(x, y, atol=1e-4) for x, y in zip(a.logits, b.logits))


@pytest.mark.parametrize("engine", [dict(max_ragged_batch_size=16),
                                    dict(max_ragged_batch_size=64, num_kv_blocks=30),      # preemption
                                    dict(max_ragged_batch_size=32, num_kv_blocks=40, enable_prefix_caching=True)],
                         ids=["chunked", "preempting", "prefix-cache"])
def test_async_gives_the_synchronous_outputs(tiny_model_dir, engine):
    path, _ = tiny_model_dir
    mix = _mix(path)
    sync, st_sync = _run(path, False, mix, **engine)
    asyn, st_async = _run(path, True, mix, **engine)
    assert len(sync) == len(asyn) == len(mix) + 1
    for a, b in zip(sync, asyn):
        _same(a, b)
    assert {r.finish_reason for r in sync} == {"stop", "length"}      # both kinds of end were exercised
    if "num_kv_blocks" in engine and not engine.get("enable_prefix_caching"):
        assert st_async["preemptions"] > 0 and st_sync["preemptions"] > 0


def test_async_runs_one_step_ahead(tiny_model_dir):
    """A token sampled by step N comes out of step N+1's call, and step N+1 was already launched with it
    (fed from the device): two steps in, the request has two generated tokens and one is pending."""
    path, _ = tiny_model_dir
    p = pipeline(str(path), device="cpu", kv_block_size=4, async_scheduling=True)
    eng = p.engine
    rid = eng.add_request("hello", SamplingParams(max_new_tokens=5, ignore_eos=True))
    assert eng.step() == []                          # the prompt ran and sampled; nothing read back yet
    seq = eng.requests[rid].seq
    assert seq.pending == 1 and eng.has_unfinished()
    outs = eng.step()                                # launches the decode, then returns the first token
    assert [len(o.new_token_ids) for o in outs] == [1] and seq.pending == 1
    assert len(seq.output_token_ids) == 2
    while eng.has_unfinished():
        eng.step()
    assert seq.pending == 0 and len(seq.output_token_ids) == 5 and seq.finish_reason == "length"
    p.destroy()


def test_abort_while_a_step_is_in_flight(tiny_model_dir):
    path, _ = tiny_model_dir
    p = pipeline(str(path), device="cpu", kv_block_size=4, async_scheduling=True)
    eng = p.engine
    keep = eng.add_request("keep going", SamplingParams(max_new_tokens=12, ignore_eos=True))
    drop = eng.add_request("drop me", SamplingParams(max_new_tokens=12, ignore_eos=True))
    eng.step()
    eng.step()
    assert eng.requests[drop].seq.pending == 1
    assert eng.abort(drop)
    done = {}
    while eng.has_unfinished():
        for o in eng.step():
            assert o.request_id != drop
            if o.finished:
                done[o.request_id] = o.response
    assert eng.stats()["kv_blocks_used"] == 0
    want = p("keep going", max_new_tokens=12, ignore_eos=True)[0]
    assert done[keep].token_ids == want.token_ids
    p.destroy()


@pytest.mark.parametrize("value,tp,device,expect", [(None, 1, "cpu", False), (None, 2, "cpu", False),
                                                    (True, 1, "cpu", True), (False, 1, "cpu", False)])
def test_async_scheduling_default_is_automatic(tmp_path, value, tp, device, expect):
    """None (the default) resolves to the asynchronous loop only on CUDA without tensor parallelism."""
    from fastgen_core.config import EngineConfig
    cfg = EngineConfig(str(tmp_path), device=device, async_scheduling=value)
    assert cfg.resolve_async_scheduling(tp) is expect


def test_async_scheduling_bad_value_names_allowed(tmp_path):
    from fastgen_core.errors import ConfigError
    with pytest.raises(ConfigError, match=r"async_scheduling must be true, false or null \(automatic\), got 'yes'"):
        from fastgen_core.config import EngineConfig
        EngineConfig(str(tmp_path), async_scheduling="yes")
    with pytest.raises(ConfigError, match="async_scheduling needs tensor_parallel_size=1"):
        EngineConfig(str(tmp_path), async_scheduling=True).resolve_async_scheduling(2)
