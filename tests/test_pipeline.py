"""The pipeline API as a user sees it: text in, text out, options honoured, bad input refused cleanly."""
import pytest

import fastgen_core as fg
from fastgen_core.testing import hf_greedy

VOCAB = 128  # tests/conftest.py builds the tiny model with this vocabulary


def test_string_prompt_matches_transformers_text(pipe, tiny_model_dir):
    _, ref = tiny_model_dir
    tok = pipe.tokenizer
    out = pipe("Hello there", max_new_tokens=12, ignore_eos=True)
    assert len(out) == 1
    want = hf_greedy(ref, tok("Hello there").input_ids, 12)
    assert out[0].token_ids == want
    assert out[0].generated_text == tok.decode(want, skip_special_tokens=True)
    assert out[0].prompt_length == len(tok("Hello there").input_ids) and out[0].generated_length == 12
    assert out[0].finish_reason == "length"


def test_results_come_back_in_prompt_order(pipe):
    prompts = ["a", "a much longer prompt than the first one", "mid size"]
    outs = pipe(prompts, max_new_tokens=5, ignore_eos=True)
    singles = [pipe(p, max_new_tokens=5, ignore_eos=True)[0] for p in prompts]
    assert [o.token_ids for o in outs] == [s.token_ids for s in singles]


def test_stop_string_spanning_tokens_is_cut(pipe):
    full = pipe("Tell me", max_new_tokens=30, ignore_eos=True)[0].generated_text
    stop = full[10:13]          # three characters = three tokens of the char-level tokenizer
    out = pipe("Tell me", max_new_tokens=30, ignore_eos=True, stop=[stop])[0]
    assert out.finish_reason == "stop"
    assert out.generated_text == full[:full.find(stop)]
    assert stop not in out.generated_text


def test_stop_token_ids_and_eos(pipe):
    full = pipe([5, 6, 7], max_new_tokens=20, ignore_eos=True)[0].token_ids
    target = full[6]
    out = pipe([5, 6, 7], max_new_tokens=20, stop_token_ids=[target], ignore_eos=True)[0]
    assert out.finish_reason == "stop" and out.token_ids == full[:full.index(target) + 1]


def test_min_new_tokens_blocks_eos(pipe):
    # force EOS to be the most likely token by using it as a stop id before min_new_tokens is reached
    full = pipe([9, 10], max_new_tokens=12, ignore_eos=True)[0].token_ids
    out = pipe([9, 10], max_new_tokens=12, min_new_tokens=8, stop_token_ids=[full[0]], ignore_eos=True)[0]
    assert out.generated_length >= 8
    assert full[0] not in out.token_ids[:7]


def test_return_full_text(pipe):
    out = pipe("Hi", max_new_tokens=4, ignore_eos=True, return_full_text=True)[0]
    assert out.generated_text.startswith("Hi") and len(out.generated_text) > 2


def test_streaming_deltas_add_up_to_the_text(pipe):
    eng = pipe.engine
    rid = eng.add_request("Stream me", fg.SamplingParams(max_new_tokens=20, ignore_eos=True, stop=["zz"]))
    pieces, final = [], None
    while final is None:
        for o in eng.step():
            if o.request_id == rid:
                pieces.append(o.delta_text)
                final = o.response if o.finished else None
    assert "".join(pieces) == final.generated_text


def test_abort_frees_kv_blocks(pipe):
    eng = pipe.engine
    rid = eng.add_request([1, 2, 3, 4], fg.SamplingParams(max_new_tokens=50, ignore_eos=True))
    eng.step()
    assert eng.stats()["kv_blocks_used"] > 0
    assert eng.abort(rid) and not eng.abort(rid)
    assert eng.stats()["kv_blocks_used"] == 0 and not eng.has_unfinished()


def test_seed_gives_same_sample_whatever_else_is_batched(pipe):
    opts = dict(max_new_tokens=10, do_sample=True, temperature=1.5, top_k=50, seed=1234, ignore_eos=True)
    alone = pipe([[4, 5, 6]], **opts)[0].token_ids
    crowd = pipe([[7] * 30, [4, 5, 6], [8, 9]], **{**opts, "seed": 1234})[1].token_ids
    assert alone == crowd
    other = pipe([[4, 5, 6]], **{**opts, "seed": 99})[0].token_ids
    assert other != alone   # a different seed really changes the sample (10 tokens at temperature 1.5)


@pytest.mark.parametrize("prompts, opts, match", [
    ([], {}, "non-empty"),
    ([""], {}, "empty string"),
    ([[]], {}, "empty token list"),
    (["hi"], {"max_new_tokens": -1}, "max_new_tokens must be >= 1"),
    (["hi"], {"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    (["hi"], {"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    (["hi"], {"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    (["hi"], {"temperature": -0.5}, "temperature must be >= 0"),
    (["hi"], {"top_k": -3}, "top_k must be >= 0"),
    (["hi"], {"bogus_option": 1}, "allowed generate options"),
    ([[1, 2, VOCAB]], {}, rf"token ids must be integers in \[0, {VOCAB}\)"),
    ([[1, -2]], {}, "token ids must be integers"),
    (["x" * 300], {}, "context is 256 tokens"),
    (["hi"], {"max_new_tokens": 1000}, "exceeds the model's context"),
    (["hi", 5], {}, "prompt 1: a prompt must be a string or a list of token ids"),
    (["hi"], {"stop": [""]}, "stop must be a list of non-empty strings"),
])
def test_bad_input_is_refused_and_the_pipeline_keeps_serving(pipe, prompts, opts, match):
    with pytest.raises(fg.InvalidRequestError, match=match):
        pipe(prompts, **opts)
    assert not pipe.engine.has_unfinished()
    assert pipe("ok", max_new_tokens=3, ignore_eos=True)[0].generated_length == 3


def test_unknown_architecture_names_the_supported_ones(tmp_path):
    import json
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["NopeForCausalLM"], "model_type": "nope",
                                                      "vocab_size": 10, "hidden_size": 8, "num_attention_heads": 2}))
    with pytest.raises(fg.UnsupportedModelError, match=r"NopeForCausalLM.*Supported architectures: \[.*LlamaForCausalLM"):
        fg.pipeline(str(tmp_path), device="cpu")


def test_missing_model_dir_and_bad_engine_options(tmp_path):
    with pytest.raises(fg.ConfigError, match="does not exist"):
        fg.pipeline(str(tmp_path / "nope"))
    with pytest.raises(fg.ConfigError, match="has no config.json"):
        fg.pipeline(str(tmp_path))
    with pytest.raises(fg.ConfigError, match="max_ragged_batch_size must be a positive integer"):
        fg.EngineConfig(model="x", max_ragged_batch_size=0)
    with pytest.raises(fg.ConfigError, match="load_format must be one of"):
        fg.EngineConfig(model="x", load_format="gguf")
    with pytest.raises(fg.ConfigError, match="unknown engine option"):
        fg.EngineConfig.from_kwargs("x", max_batch=3)
    with pytest.raises(fg.ConfigError, match="dtype must be one of"):
        fg.EngineConfig(model="x", dtype="float8")


def test_request_too_big_for_the_kv_cache_is_refused(tiny_model_dir):
    p = fg.pipeline(str(tiny_model_dir[0]), device="cpu", num_kv_blocks=2, kv_block_size=8)
    with pytest.raises(fg.InvalidRequestError, match="KV blocks"):
        p([[1] * 10], max_new_tokens=20)
    # a batch whose second prompt can never fit queues none of them
    with pytest.raises(fg.InvalidRequestError, match="prompt 1: request needs 3 KV blocks"):
        p([[1] * 4, [1] * 10], max_new_tokens=8)
    assert not p.engine.has_unfinished() and p.engine.stats()["kv_blocks_used"] == 0
    assert p([[1] * 4], max_new_tokens=4, ignore_eos=True)[0].generated_length == 4
