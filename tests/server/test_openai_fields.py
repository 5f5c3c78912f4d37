"""Request fields as OpenAI's API defines them, against `fastgen serve`: the ones that change nothing a self-hosted
engine generates are accepted and ignored (as vLLM does), the ones it cannot honour are a 400 that says "not
supported", and only a name OpenAI does not have gets the spelling hint."""
import openai
import pytest

MSGS = [{"role": "user", "content": "hello"}]
IGNORED_CHAT = {"metadata": {"team": "search", "run": "7"}, "store": True, "user": "u-1", "service_tier": "auto",
                "parallel_tool_calls": False, "reasoning_effort": "low", "safety_identifier": "hash-1",
                "prompt_cache_key": "conversation-9", "verbosity": "low", "modalities": ["text"],
                "stream_options": None}
IGNORED_COMPLETIONS = {"metadata": {"k": "v"}, "store": False, "user": "u-1", "service_tier": "default",
                       "safety_identifier": "hash-1", "prompt_cache_key": "p"}


def post(server, path, body):
    r = server["http"].post(path, json=body)
    return r.status_code, r.json()


@pytest.mark.parametrize("name", sorted(IGNORED_CHAT))
def test_chat_fields_without_meaning_here_are_accepted_and_ignored(cli_server, name):
    base = {"messages": MSGS, "max_tokens": 6, "temperature": 0}
    status, plain = post(cli_server, "/v1/chat/completions", base)
    assert status == 200, plain
    status, got = post(cli_server, "/v1/chat/completions", {**base, name: IGNORED_CHAT[name]})
    assert status == 200, got
    assert got["choices"][0]["message"]["content"] == plain["choices"][0]["message"]["content"]


@pytest.mark.parametrize("name", sorted(IGNORED_COMPLETIONS))
def test_completion_fields_without_meaning_here_are_accepted_and_ignored(cli_server, name):
    base = {"prompt": "Once upon", "max_tokens": 6, "temperature": 0}
    status, plain = post(cli_server, "/v1/completions", base)
    status, got = post(cli_server, "/v1/completions", {**base, name: IGNORED_COMPLETIONS[name]})
    assert status == 200, got
    assert got["choices"][0]["text"] == plain["choices"][0]["text"]


def test_the_official_client_sends_them_and_gets_an_answer(cli_server):
    oa = openai.OpenAI(base_url=cli_server["url"] + "/v1", api_key=cli_server["key"])
    r = oa.chat.completions.create(model=cli_server["name"], messages=MSGS, max_completion_tokens=4, temperature=0,
                                   metadata={"a": "b"}, store=False, user="me", service_tier="auto",
                                   reasoning_effort="low", parallel_tool_calls=False, safety_identifier="x",
                                   prompt_cache_key="k", modalities=["text"], stream=True,
                                   stream_options={"include_usage": True, "include_obfuscation": False})
    chunks = list(r)
    assert chunks[-1].usage.completion_tokens == 4


REFUSED = [
    ("prediction", {"type": "content", "content": "draft"}),
    ("modalities", ["text", "audio"]),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("web_search_options", {}),
    ("functions", [{"name": "f", "parameters": {}}]),
    ("function_call", "auto"),
]


@pytest.mark.parametrize("name,value", REFUSED, ids=[r[0] for r in REFUSED])
def test_chat_fields_this_server_cannot_honour_are_refused_as_not_supported(cli_server, name, value):
    status, body = post(cli_server, "/v1/chat/completions", {"messages": MSGS, "max_tokens": 2, name: value})
    assert status == 400, body
    err = body["error"]
    assert err["param"] == name and f"{name} is not supported" in err["message"], err
    assert "unknown field" not in err["message"]


def test_a_misspelt_field_still_gets_the_spelling_hint(cli_server):
    status, body = post(cli_server, "/v1/chat/completions", {"messages": MSGS, "metdata": {"a": "b"}})
    assert status == 400
    assert "metdata: unknown field (check the spelling" in body["error"]["message"]
