"""Overload control on a real ``fastgen serve``: past the queue limit a 429 says when to retry (Retry-After), and a
request past its deadline (X-Request-Timeout, capped by --request-timeout), waiting or running, ends with a 504 (or
an error event, then [DONE], on a stream) and frees its KV blocks; both are counted in /metrics.

The server has one running slot and one waiting place, so a second request waits and a third is refused. The model
is the tiny Llama 16 layers deep: a step costs enough that a 4000-token request runs for seconds however fast the
machine, and --request-timeout ends every long request the tests leave behind within a few seconds."""
import asyncio
import json
import threading
import time

import httpx
import pytest
from transformers import LlamaConfig

from fastgen_core.testing import make_tiny_tokenizer, save_tiny_model

from .conftest import serve
from .test_server_load import counter

SERVER_TIMEOUT_S = 3
LONG = 4000                  # tokens: the 4096-token context, nearly all of it generated


def save_deep_tiny_llama(path) -> None:
    """The tiny Llama of tests/conftest.py with a 4096-token context and 16 layers."""
    config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                         num_hidden_layers=16, vocab_size=128, max_position_embeddings=4096, bos_token_id=1,
                         eos_token_id=2, pad_token_id=3)
    save_tiny_model(config, path, tokenizer=make_tiny_tokenizer(128), init_std=0.1)


@pytest.fixture(scope="module")
def deep_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama-deep")
    save_deep_tiny_llama(path)
    return path


@pytest.fixture(scope="module")
def busy(deep_model_dir, tmp_path_factory):
    yield from serve(deep_model_dir, tmp_path_factory.mktemp("fastgen-cache-overload"), "--queue-limit", "1",
                     "--engine-options", json.dumps({"max_ragged_sequence_count": 1}),
                     "--request-timeout", str(SERVER_TIMEOUT_S))


def body(stream=False, max_tokens=LONG) -> dict:
    return {"prompt": "hello", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": stream}


def engine_of(http) -> dict:
    return http.get("/fastgen/stats").json()["replicas"][0]["stats"]["engine"]


def wait_idle(http, timeout=60) -> dict:
    """Until nothing runs or waits and every KV block is free; the engine's stats then."""
    deadline = time.monotonic() + timeout
    while True:
        engine = engine_of(http)
        if engine["kv_blocks_used"] == 0 and engine["running"] == 0 and engine["waiting"] == 0:
            return engine
        assert time.monotonic() < deadline, f"KV blocks still in use after {timeout}s: {engine}"
        time.sleep(0.1)


class SlotHolder:
    """A long streaming request (no deadline of its own, so --request-timeout's) that holds the one running slot
    from its first token until ``leave()`` closes its connection (the server aborts it)."""

    def __init__(self, server):
        self.first, self.done = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, args=(server,), daemon=True)
        self.thread.start()
        assert self.first.wait(60), "the slot holder got no token"

    def _run(self, server):
        try:
            with httpx.stream("POST", server["url"] + "/v1/completions", json=body(stream=True), timeout=60,
                              headers={"Authorization": f"Bearer {server['key']}"}) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.first.set()
                    if self.done.is_set():
                        return
        except httpx.HTTPError:
            pass
        finally:
            self.first.set()

    def leave(self):
        self.done.set()
        self.thread.join(30)


def sse_events(response) -> list[str]:
    return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def post(server, payload, timeout_header=None):
    """POST /v1/completions; (status, Retry-After, error or None, SSE events for a stream)."""
    headers = {"Authorization": f"Bearer {server['key']}"}
    if timeout_header is not None:
        headers["X-Request-Timeout"] = timeout_header
    with httpx.stream("POST", server["url"] + "/v1/completions", json=payload, headers=headers, timeout=60) as r:
        if payload.get("stream") and r.status_code == 200:
            events = sse_events(r)
            errors = [json.loads(e)["error"] for e in events if e.startswith('{"error"')]
            return r.status_code, r.headers.get("retry-after"), (errors[0] if errors else None), events
        r.read()
        error = r.json().get("error") if r.status_code != 200 else None
        return r.status_code, r.headers.get("retry-after"), error, None


def assert_timed_out(status, error, events, stream: bool):
    """The documented ending of a request past its deadline."""
    if stream:
        assert status == 200 and events[-1] == "[DONE]", events[-3:]
        assert json.loads(events[-2])["error"] == error and not any('"finish_reason":"length"' in e for e in events)
    else:
        assert status == 504 and events is None
    assert error["code"] == 504 and error["type"] == "timeout_error", error
    assert "did not finish within its deadline" in error["message"], error


async def _burst(server, n: int):
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server["url"], timeout=60, limits=limits,
                                 headers={"Authorization": f"Bearer {server['key']}"}) as http:
        return await asyncio.gather(*(http.post("/v1/completions", json=body()) for _ in range(n)))


def test_past_the_queue_limit_a_429_says_when_to_retry_and_is_counted(busy):
    http = busy["http"]
    wait_idle(http)
    before = counter(http.get("/metrics").text, "fastgen_requests_rejected_total", reason="queue_full")
    answers = asyncio.run(_burst(busy, 8))           # 1 running + 1 waiting fit; the rest are refused
    codes = [a.status_code for a in answers]
    assert set(codes) <= {200, 429, 504} and codes.count(429) >= 1, codes   # 504: the server's deadline ended them
    for a in answers:
        if a.status_code == 429:
            error = a.json()["error"]
            assert error["type"] == "rate_limit_error" and "server busy" in error["message"], error
            assert a.headers["retry-after"].isdigit() and int(a.headers["retry-after"]) >= 1, a.headers
            assert f"Retry in {a.headers['retry-after']}s" in error["message"], error
    after = counter(http.get("/metrics").text, "fastgen_requests_rejected_total", reason="queue_full")
    assert after - before == codes.count(429)
    wait_idle(http)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_deadline_ends_a_waiting_request(busy, stream):
    http = busy["http"]
    wait_idle(http)
    before = http.get("/metrics").text
    holder = SlotHolder(busy)                        # the running slot is taken: the next request waits
    try:
        status, _, error, events = post(busy, body(stream=stream), timeout_header="0.5")
    finally:
        holder.leave()
    assert_timed_out(status, error, events, stream)
    assert "X-Request-Timeout: 0.5" in error["message"] and "before its first token" in error["message"], error
    assert wait_idle(http, timeout=30)["kv_blocks_used"] == 0
    after = http.get("/metrics").text
    assert counter(after, "fastgen_requests_timed_out_total", phase="waiting") - \
        counter(before, "fastgen_requests_timed_out_total", phase="waiting") == 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_deadline_ends_a_running_request_and_frees_its_kv_blocks(busy, stream):
    http = busy["http"]
    wait_idle(http)
    before = http.get("/metrics").text
    status, _, error, events = post(busy, body(stream=stream), timeout_header="1.5")
    assert_timed_out(status, error, events, stream)
    assert "X-Request-Timeout: 1.5" in error["message"] and "while generating" in error["message"], error
    if stream:
        assert sum('"text"' in e for e in events) >= 1        # tokens came before the error event
    # aborted at the deadline, not run to the end: every KV block is free again at once
    assert wait_idle(http, timeout=10)["kv_blocks_used"] == 0
    after = http.get("/metrics").text
    for name, labels in (("fastgen_requests_timed_out_total", {"phase": "running"}),
                         ("fastgen_requests_total", {"finish_reason": "timeout"})):
        assert counter(after, name, **labels) - counter(before, name, **labels) == 1, name


def test_the_servers_request_timeout_caps_a_longer_header(busy):
    http = busy["http"]
    wait_idle(http)
    started = time.monotonic()
    status, _, error, _ = post(busy, body(), timeout_header="100")
    assert status == 504 and time.monotonic() - started < 60, error
    assert f"the server's --request-timeout {SERVER_TIMEOUT_S}" in error["message"], error
    wait_idle(http, timeout=10)


@pytest.mark.parametrize("value", ["soon", "0", "-3", "nan", "inf", "1e9", ""])
def test_a_bad_deadline_is_a_400_naming_the_header(busy, value):
    status, _, error, _ = post(busy, body(max_tokens=2), timeout_header=value)
    assert status == 400 and error["param"] == "X-Request-Timeout", error
    assert error["message"].startswith("X-Request-Timeout: must be a number of seconds greater than 0"), error
    assert repr(value) in error["message"], error
