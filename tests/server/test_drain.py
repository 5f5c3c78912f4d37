"""SIGTERM drains ``fastgen serve`` as orchestrators expect: /ready turns 503 at once (/health, liveness, stays 200),
new requests get 503 with Retry-After, the request in flight finishes, and the process exits 0; one still running
at --drain-timeout is cut off and the process exits 0 all the same."""
import json
import signal
import threading
import time

import httpx
import pytest

from .conftest import serve
from .test_overload import save_deep_tiny_llama
from .test_server_load import counter


@pytest.fixture(scope="module")
def deep_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama-deep-drain")
    save_deep_tiny_llama(path)
    return path


@pytest.fixture
def start(deep_model_dir, tmp_path):
    """Starts ``fastgen serve`` with these options; stopped (if still running) after the test."""
    started = []

    def go(*options):
        gen = serve(deep_model_dir, tmp_path / f"cache-{len(started)}", *options)
        started.append(gen)
        return next(gen)
    yield go
    for gen in started:
        gen.close()


class InFlight:
    """A streaming completion in a thread; returns once its first token has come."""

    def __init__(self, server, max_tokens: int):
        self.events: list[str] = []
        self.error: Exception | None = None
        self.first = threading.Event()
        body = {"prompt": "drain me", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True}}
        self.thread = threading.Thread(target=self._run, args=(server, body), daemon=True)
        self.thread.start()
        assert self.first.wait(60) and not self.error, f"the request did not start: {self.error}"

    def _run(self, server, body):
        try:
            with httpx.stream("POST", server["url"] + "/v1/completions", json=body, timeout=120,
                              headers={"Authorization": f"Bearer {server['key']}"}) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line[6:])
                        self.first.set()
        except httpx.HTTPError as e:
            self.error = e
        finally:
            self.first.set()

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1] == "[DONE]"

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the stream is still open"


def test_sigterm_turns_ready_off_refuses_new_requests_finishes_the_one_in_flight_and_exits_0(start):
    server = start("--drain-timeout", "120")
    url, proc = server["url"], server["proc"]
    assert httpx.get(url + "/ready", timeout=30).status_code == 200           # public, as /health is
    in_flight = InFlight(server, max_tokens=2000)

    proc.send_signal(signal.SIGTERM)
    ready = httpx.get(url + "/ready", timeout=30)
    assert ready.status_code == 503 and ready.json()["status"] == "draining", ready.text
    refused = server["http"].post("/v1/completions", json={"prompt": "late", "max_tokens": 2})
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"].isdigit() and int(refused.headers["retry-after"]) >= 1
    error = refused.json()["error"]
    assert error["code"] == 503 and "shutting down" in error["message"], error
    assert httpx.get(url + "/health", timeout=30).status_code == 200         # alive: not restarted by a kubelet
    metrics = httpx.get(url + "/metrics", timeout=30).text
    assert counter(metrics, "fastgen_requests_rejected_total", reason="draining") == 1
    assert not in_flight.done                        # all of the above happened while it was in flight

    in_flight.join(120)
    assert in_flight.error is None and in_flight.done, (in_flight.error, in_flight.events[-3:])
    assert json.loads(in_flight.events[-2])["usage"]["completion_tokens"] == 2000      # finished, not cut off
    assert proc.wait(120) == 0


def test_a_request_still_running_at_the_drain_timeout_is_cut_off_and_the_process_exits_0(start):
    server = start("--drain-timeout", "2")
    in_flight = InFlight(server, max_tokens=4000)    # far longer than the drain timeout
    began = time.monotonic()
    server["proc"].send_signal(signal.SIGTERM)
    assert server["proc"].wait(120) == 0
    assert time.monotonic() - began < 60
    in_flight.join(30)
    assert not in_flight.done, in_flight.events[-3:]
