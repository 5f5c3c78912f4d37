"""Structured outputs over HTTP, against `fastgen serve` of the tiny Llama: OpenAI's response_format, vLLM's
structured_outputs and its older guided_* fields constrain what is generated; a bad spec, or two spellings at
once, is a 400 naming the field."""
import json
import re

import openai
import pytest

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("xgrammar")

MSGS = [{"role": "user", "content": "hello"}]
SCHEMA = {"type": "object", "properties": {"c": {"enum": ["ab", "cd"]}, "n": {"type": "integer", "minimum": 0,
                                                                          "maximum": 9}},
          "required": ["c", "n"], "additionalProperties": False}


def post(server, path, body):
    r = server["http"].post(path, json=body)
    return r.status_code, r.json()


def _chat(server, **fields):
    status, body = post(server, "/v1/chat/completions", {"messages": MSGS, "max_tokens": 40, "seed": 1, **fields})
    assert status == 200, body
    return body["choices"]


def _completion(server, **fields):
    status, body = post(server, "/v1/completions", {"prompt": "Once upon", "max_tokens": 40, "seed": 1, **fields})
    assert status == 200, body
    return body["choices"]


@pytest.mark.parametrize("fields", [
    {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}}},
    {"structured_outputs": {"json": SCHEMA}},
    {"guided_json": SCHEMA},
], ids=["response_format", "structured_outputs", "guided_json"])
def test_json_schema_on_both_endpoints(cli_server, fields):
    for choices in (_chat(cli_server, n=2, **fields), _completion(cli_server, temperature=0, **fields)):
        for c in choices:
            text = c["message"]["content"] if "message" in c else c["text"]
            assert c["finish_reason"] == "stop", c
            jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_regex_and_choice(cli_server):
    for c in _chat(cli_server, response_format={"type": "json_object"}, max_tokens=60):
        text = c["message"]["content"]
        assert text.startswith("{")
        if c["finish_reason"] == "stop":
            assert isinstance(json.loads(text), dict)
    for fields in ({"structured_outputs": {"regex": "[a-c]{2}-[0-9]{3}"}}, {"guided_regex": "[a-c]{2}-[0-9]{3}"}):
        for c in _completion(cli_server, n=2, **fields):
            assert re.fullmatch("[a-c]{2}-[0-9]{3}", c["text"]) and c["finish_reason"] == "stop", c
    for fields in ({"structured_outputs": {"choice": ["yes", "no"]}}, {"guided_choice": ["yes", "no"]}):
        for c in _chat(cli_server, n=2, **fields):
            assert c["message"]["content"] in ("yes", "no"), c
    grammar = 'root ::= num ("+" num)*\nnum ::= [1-9]'
    for c in _completion(cli_server, guided_grammar=grammar, max_tokens=9):
        assert re.fullmatch(r"[1-9](\+[1-9])*\+?", c["text"]), c


def test_text_response_format_is_unconstrained(cli_server):
    plain = _completion(cli_server, temperature=0, max_tokens=8)
    assert _completion(cli_server, temperature=0, max_tokens=8, response_format={"type": "text"}) == plain


def test_the_official_client_response_format(cli_server):
    oa = openai.OpenAI(base_url=cli_server["url"] + "/v1", api_key=cli_server["key"])
    r = oa.chat.completions.create(model=cli_server["name"], messages=MSGS, max_tokens=40, temperature=0,
                                   response_format={"type": "json_schema",
                                                    "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}})
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)


BAD = [
    ({"structured_outputs": {"json": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}},
     "structured_outputs"),
    ({"guided_regex": "([a-z"}, "guided_regex"),
    ({"structured_outputs": {"grammar": "root ::= missing"}}, "structured_outputs"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "structured_outputs"),
]


@pytest.mark.parametrize("fields,name", BAD, ids=["schema", "regex", "grammar", "choice", "format", "both"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_bad_specs_are_400s_naming_the_field(cli_server, fields, name, path):
    body = {"messages": MSGS} if "chat" in path else {"prompt": "x"}
    status, got = post(cli_server, path, {**body, "max_tokens": 4, **fields})
    assert status == 400, got
    err = got["error"]
    assert name in err["message"] and err["param"] in fields, err
    if len(fields) == 2:
        assert "response_format" in err["message"] and "structured_outputs" in err["message"]
