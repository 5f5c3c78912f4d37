"""Structured outputs on the embedded default model (SmolLM2-135M-Instruct, real weights, CPU): every output
follows its JSON schema, regex, choice list or EBNF grammar, greedy and sampled, under a tiny token budget and
under preemption; bad specs are refused naming the field; unconstrained requests are unchanged."""
import json
import re

import pytest

import fastgen_core as fg
from fastgen_core.errors import InvalidRequestError

pytest.importorskip("gguf")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("xgrammar")

SCHEMA = {
    "type": "object",
    "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 99},
                                                          "y": {"type": "integer", "minimum": 0, "maximum": 99}},
                        "required": ["x", "y"], "additionalProperties": False}},
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Z][a-z]{1,8}$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "minItems": 1, "maxItems": 2},
        "home": {"$ref": "#/$defs/point"},
        "owner": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 9}},
                  "required": ["id"], "additionalProperties": False},
        "nickname": {"type": "string", "maxLength": 8},
    },
    "required": ["name", "age", "color", "tags", "home", "owner"],
    "additionalProperties": False,
}
PROMPTS = ["Describe a person as JSON:", "Here is a JSON record of a user:", "JSON:"]
MAX_TOKENS = 120


@pytest.fixture(scope="module")
def smol():
    from fastgen_core.default_model import default_model_dir
    path = str(default_model_dir())
    pipe = fg.pipeline(path, device="cpu", max_ragged_batch_size=64)
    yield path, pipe
    pipe.destroy()


def _valid(outs, schema=SCHEMA):
    for o in outs:
        assert o.finish_reason == "stop", o
        jsonschema.validate(json.loads(o.generated_text), schema)


def test_json_schema_outputs_validate_greedy_and_sampled(smol):
    _, pipe = smol
    _valid(pipe(PROMPTS, max_new_tokens=MAX_TOKENS, structured_outputs={"json": SCHEMA}))
    outs = pipe(PROMPTS, max_new_tokens=MAX_TOKENS, do_sample=True, temperature=0.8, seed=7,
                structured_outputs={"json": SCHEMA})
    _valid(outs)
    again = pipe(PROMPTS, max_new_tokens=MAX_TOKENS, do_sample=True, temperature=0.8, seed=7,
                 structured_outputs={"json": SCHEMA})
    assert [o.token_ids for o in outs] == [o.token_ids for o in again]


def test_json_under_a_tiny_budget_and_preemption(smol):
    path, _ = smol
    for opts in (dict(max_ragged_batch_size=8), dict(max_ragged_batch_size=64, num_kv_blocks=20, kv_block_size=8)):
        p = fg.pipeline(path, device="cpu", **opts)
        try:
            outs = p(PROMPTS * 2, max_new_tokens=MAX_TOKENS, do_sample=True, seed=3,
                     structured_outputs={"json": SCHEMA})
            _valid(outs)
            if "num_kv_blocks" in opts:
                assert p.engine.stats()["preemptions"] > 0
        finally:
            p.destroy()


def test_json_object_regex_choice_and_grammar(smol):
    _, pipe = smol
    for o in pipe(PROMPTS[:2], max_new_tokens=40, structured_outputs={"json_object": True}):
        assert o.finish_reason == "stop" and isinstance(json.loads(o.generated_text), dict)
    regex = r"[0-9]{3}-[0-9]{4}"
    for o in pipe(["My phone number is", "Call"], max_new_tokens=20, do_sample=True, seed=1,
                  structured_outputs={"regex": regex}):
        assert re.fullmatch(regex, o.generated_text), o.generated_text
    choices = ["positive", "negative", "neutral"]
    for o in pipe(["I love it! Sentiment:", "Terrible. Sentiment:"], max_new_tokens=10,
                  structured_outputs={"choice": choices}):
        assert o.generated_text in choices and o.finish_reason == "stop"
    grammar = 'root ::= expr\nexpr ::= term (("+" | "-") term)*\nterm ::= num | "(" expr ")"\nnum ::= [1-9] [0-9]?'
    for o in pipe(["2 + 3 * (4 - 1) =", "An arithmetic expression:"], max_new_tokens=30, do_sample=True, seed=5,
                  structured_outputs={"grammar": grammar}):
        if o.finish_reason == "stop":
            assert re.fullmatch(r"[0-9+\-() ]+", o.generated_text)
            eval(o.generated_text, {"__builtins__": {}})            # digits, +, -, parentheses: it parses
        else:
            assert o.finish_reason == "length"


def test_max_tokens_mid_structure_is_length(smol):
    _, pipe = smol
    (o,) = pipe(["JSON:"], max_new_tokens=3, structured_outputs={"json": SCHEMA})
    assert o.finish_reason == "length" and o.generated_length == 3


@pytest.mark.parametrize("spec,what", [
    ({"json": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}, "json"),
    ({"json": "{not json"}, "json"),
    ({"regex": "([a-z"}, "regex"),
    ({"grammar": "root ::= undefined_rule"}, "grammar"),
    ({"choice": []}, "choice"),
    ({"json": {}, "regex": "a"}, "exactly one"),
    ({"xml": "a"}, "exactly one"),
])
def test_bad_specs_are_refused_naming_the_field(smol, spec, what):
    _, pipe = smol
    with pytest.raises(InvalidRequestError) as e:
        pipe(["x"], max_new_tokens=4, structured_outputs=spec)
    assert e.value.param == "structured_outputs" and what in str(e.value) and "structured_outputs" in str(e.value)
    assert not pipe.engine.has_unfinished()


def test_unconstrained_request_in_the_same_batch_is_unchanged(smol):
    _, pipe = smol
    alone = pipe(["The capital of France is"], max_new_tokens=16, ignore_eos=True)[0].token_ids
    eng = pipe.engine
    from fastgen_core.sampling import SamplingParams
    plain = eng.add_request("The capital of France is", SamplingParams(max_new_tokens=16, ignore_eos=True))
    eng.add_request("JSON:", SamplingParams(max_new_tokens=30, structured_outputs={"json": SCHEMA}))
    done = {}
    while eng.has_unfinished():
        for out in eng.step():
            if out.finished:
                done[out.request_id] = out.response
    assert done[plain].token_ids == alone


def test_asynchronous_scheduling_gives_the_same_constrained_tokens(smol):
    """With async scheduling a step with a constrained row runs synchronously: same tokens either way."""
    path, _ = smol
    got = []
    for async_scheduling in (False, True):
        p = fg.pipeline(path, device="cpu", async_scheduling=async_scheduling, num_kv_blocks=20, kv_block_size=8)
        try:
            got.append([o.token_ids for o in p(PROMPTS[:2], max_new_tokens=MAX_TOKENS, do_sample=True, seed=11,
                                               structured_outputs={"json": SCHEMA})]
                       + [o.token_ids for o in p(["The capital of France is"], max_new_tokens=12)])
        finally:
            p.destroy()
    assert got[0] == got[1]
