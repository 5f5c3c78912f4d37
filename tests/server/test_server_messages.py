"""Chat messages are validated as OpenAI's API does (user, system, developer and tool messages need content; an
assistant's may be null) by /v1/chat/completions and /tokenize alike: every malformed shape is a 400 naming the
field, logged as one line without a traceback, and the deployment keeps serving."""
import asyncio
import logging
import time

import httpx
import pytest

import fastgen_core as fg
from fastgen_core.server.app import create_app
from fastgen_core.server.replica.engine_loop import EngineLoop
from fastgen_core.server.replica.local import LocalBackend, ModelInfo
from fastgen_core.server.replica.metrics import ReplicaMetrics

BAD_MESSAGES = [
    ([{"role": "user"}], "messages.0.user.content: field required"),
    ([{"role": "user", "content": None}], "messages.0.user.content: must be one of these types: str, list[TextPart]"),
    ([], "messages: List should have at least 1 item"),
    ([{"role": "system"}], "messages.0.system.content: field required"),
    ([{"role": "user", "content": "hi"}, {"role": "developer", "content": None}], "messages.1.developer.content"),
    ([{"content": "x"}], "discriminator 'role'"),
    ([{"role": "wizard", "content": "x"}], "'wizard'"),
    ([{"role": "user", "content": []}], "messages.0.user.content: List should have at least 1 item"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
     "messages.0.user.content.0.type: Input should be 'text'"),
    ([{"role": "tool", "content": "x"}], "messages.0.tool.tool_call_id: field required"),
    ("hi", "messages: Input should be a valid list"),
]
PATHS = ["/tokenize", "/v1/chat/completions"]
CASES = [(p, m, w) for p in PATHS for m, w in BAD_MESSAGES]


def new_log(server, since: int, path: str) -> list[str]:
    """Lines the deployment logged after byte ``since``, once the line about ``path`` is there (or 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        with open(server["log"], "rb") as f:
            f.seek(since)
            lines = f.read().decode(errors="replace").splitlines()
        if any(path in line for line in lines) or time.monotonic() > deadline:
            return lines


@pytest.mark.parametrize("path,messages,words", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_malformed_messages_are_a_400_and_one_log_line(logged_long_server, path, messages, words):
    http = logged_long_server["http"]
    since = logged_long_server["log"].stat().st_size
    body = {"messages": messages} if path == "/tokenize" else {"messages": messages, "max_tokens": 2}
    r = http.post(path, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert words in err["message"] and err["param"] == "messages", err
    said = new_log(logged_long_server, since, path)
    assert len(said) == 1 and f"rejected POST {path} (400): " in said[0] and words in said[0], said
    ok = http.post("/tokenize", json={"messages": [{"role": "user", "content": "still fine"}]})
    assert ok.status_code == 200 and ok.json()["count"] > 0


def test_an_assistant_message_may_have_null_content(logged_long_server, pipe):
    http = logged_long_server["http"]
    history = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
               {"role": "assistant", "content": None}, {"role": "user", "content": [{"type": "text", "text": "x"}]}]
    r = http.post("/tokenize", json={"messages": history})
    assert r.status_code == 200, r.text
    as_empty = [{**m, "content": ""} if m["role"] == "assistant" else m for m in history[:3]] + \
        [{"role": "user", "content": "x"}]
    want = pipe.tokenizer.apply_chat_template(as_empty, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert r.json()["tokens"] == list(want)
    r = http.post("/v1/chat/completions", json={"messages": history, "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == len(want)


REFUSING_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'assistant' and loop.first %}"
                     "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
                     "{{ m['content'] }}{% endfor %}")


@pytest.fixture(scope="module")
def refusing_app(tiny_model_dir):
    """A replica's app (engine loop thread included) whose chat template raises, as many real ones do."""
    engine = fg.pipeline(str(tiny_model_dir[0]), device="cpu", kv_block_size=8).engine
    engine.tokenizer.chat_template = REFUSING_TEMPLATE
    holder = {}
    metrics = ReplicaMetrics(0, lambda: holder["loop"].snapshot)
    loop = holder["loop"] = EngineLoop(engine, metrics, stall_timeout_s=60)
    backend = LocalBackend(loop, ModelInfo("refusing", str(tiny_model_dir[0]), engine.max_context, 0), metrics,
                           queue_limit=16)
    loop.start()
    try:
        yield create_app(backend, "refusing", str(tiny_model_dir[0]))
    finally:
        loop.stop()


async def _post(app, path, body):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica",
                                 timeout=60) as http:
        return await http.post(path, json=body)


@pytest.mark.parametrize("path", PATHS)
def test_a_template_that_refuses_the_messages_is_a_400_without_traceback(refusing_app, path, caplog):
    with caplog.at_level(logging.WARNING, logger="fastgen.server"):
        r = asyncio.run(_post(refusing_app, path, {"messages": [{"role": "assistant", "content": "x"}]}))
    assert r.status_code == 400, r.text
    assert "chat template refused these messages: Conversation roles must alternate" in r.json()["error"]["message"]
    assert [rec.getMessage() for rec in caplog.records] == [f"rejected POST {path} (400): {r.json()['error']['message']}"]
    assert not any(rec.exc_info for rec in caplog.records)
    fine = asyncio.run(_post(refusing_app, path, {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
                             if path != "/tokenize" else {"messages": [{"role": "user", "content": "x"}]}))
    assert fine.status_code == 200, fine.text
