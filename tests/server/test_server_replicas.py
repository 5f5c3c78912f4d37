"""A deployment started with fastgen_core.serve: two CPU replicas behind one front door.

The tests run in file order on one deployment: routing, queue limit, a stuck replica seen by /health (and,
with unhealthy_restart_s=0, left alone however long it is stuck), a killed replica (its in-flight requests
fail clearly, the other replica's don't, and it is restarted and serves again), a replica stopped on
purpose (not restarted), and finally terminate() draining an in-flight stream and stopping every process.
"""
import asyncio
import json
import os
import signal
import threading
import time
import uuid

import httpx
import pytest

import fastgen_core as fg
from fastgen_core.server.client import pid_alive as alive

QUEUE_LIMIT, SLOTS = 2, 4          # per replica: 4 running + 2 waiting, then 429


@pytest.fixture(scope="module")
def deployment(tiny_model_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("fastgen-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTGEN_CACHE", str(cache))
        client = fg.serve(str(tiny_model_dir[0]), deployment_name=f"two-{uuid.uuid4().hex[:6]}", port=0,
                          device="cpu", replicas=2, cpu_threads=1, queue_limit=QUEUE_LIMIT, health_timeout_s=1.0,
                          unhealthy_restart_s=0, max_ragged_sequence_count=SLOTS, kv_block_size=8)
        info = client.deployment()
        try:
            yield client, info, cache / "deployments"
        finally:
            if alive(info["pid"]):
                client.terminate()


def test_two_replicas_both_serve_traffic(deployment, pipe):
    client, info = deployment[:2]
    assert len(info["replicas"]) == 2 and len({r["pid"] for r in info["replicas"]}) == 2
    prompts = ["first", "second", "third", "fourth"]
    want = pipe(prompts, max_new_tokens=5, ignore_eos=True)
    got = [client.generate(p, max_new_tokens=5, ignore_eos=True)[0] for p in prompts]   # one at a time
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    stats = client.stats()["replicas"]
    assert all(r["routed"] >= 1 for r in stats), stats
    assert all(r["stats"]["engine"]["finished"] >= 1 for r in stats), stats     # each engine generated
    assert {r["stats"]["pid"] for r in stats} == {r["pid"] for r in info["replicas"]}


async def _burst(url: str, n: int):
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=None)) as http:
        body = {"prompts": "busy", "max_new_tokens": 60, "ignore_eos": True}
        return await asyncio.gather(*(http.post("/generate", json=body) for _ in range(n)))


def test_past_the_queue_limit_requests_get_429(deployment):
    client = deployment[0]
    answers = asyncio.run(_burst(client.url, 40))
    codes = [a.status_code for a in answers]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) >= 1 and codes.count(200) >= 2 * (SLOTS + QUEUE_LIMIT), codes
    busy = next(a for a in answers if a.status_code == 429).json()["error"]
    assert "server busy" in busy["message"] and busy["code"] == 429
    assert all(a.json()[0]["generated_length"] == 60 for a in answers if a.status_code == 200)
    assert client.generate("after the burst", max_new_tokens=3)[0].generated_length >= 1


def _health(client) -> int:
    return httpx.get(client.url + "/health", timeout=30).status_code


def test_health_is_503_while_a_replica_is_stuck(deployment):
    client, info = deployment[:2]
    assert _health(client) == 200
    victim = info["replicas"][1]["pid"]
    os.kill(victim, signal.SIGSTOP)                 # a stuck replica: no step, no answer
    try:
        assert _health(client) == 503
    finally:
        os.kill(victim, signal.SIGCONT)
    _wait_until(lambda: _health(client) == 200, 30, "the replica did not recover from SIGSTOP")
    assert [r["pid"] for r in client.deployment()["replicas"]] == [r["pid"] for r in info["replicas"]]


def test_with_unhealthy_restart_off_a_stopped_replica_is_left_alone(deployment):
    client, info = deployment[:2]
    victim = info["replicas"][1]["pid"]
    os.kill(victim, signal.SIGSTOP)                 # answers nothing, for longer than a small unhealthy_restart_s
    try:
        time.sleep(3)
        stuck = _replica_health(client, 1)
        assert alive(victim) and stuck["pid"] == victim and stuck["state"] == "up" and not stuck["healthy"], stuck
        assert stuck["detail"].startswith("no health answer from the replica for") and "restart" not in \
            stuck["detail"], stuck
    finally:
        os.kill(victim, signal.SIGCONT)
    _wait_until(lambda: _health(client) == 200, 30, "the replica did not recover from SIGSTOP")
    now = client.deployment()["replicas"]
    assert [r["pid"] for r in now] == [r["pid"] for r in info["replicas"]] and now[1]["restarts"] == 0, now


def _wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _replica_health(client, index: int) -> dict:
    return httpx.get(client.url + "/health", timeout=30).json()["replicas"][index]


class Stream(threading.Thread):
    """A raw /generate SSE stream in a thread: its data events, as they come; ``on_first`` runs (in the
    thread) as soon as the first event is in."""

    def __init__(self, url: str, prompt: str, n: int, on_first=None):
        super().__init__(daemon=True)
        self.url, self.body = url, {"prompts": prompt, "max_new_tokens": n, "ignore_eos": True, "stream": True}
        self.on_first = on_first
        self.events: list = []
        self.started = threading.Event()
        self.start()

    def run(self):
        try:
            with httpx.stream("POST", self.url + "/generate", json=self.body, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line[6:])
                        if len(self.events) == 1 and self.on_first is not None:
                            self.on_first()
                        self.started.set()
        finally:
            self.started.set()

    def wait_started(self):
        assert self.started.wait(30), "the stream did not start"
        assert self.events and "error" not in self.events[0], self.events


def test_a_killed_replica_fails_its_requests_clearly_and_is_restarted(deployment):
    client, info = deployment[:2]
    victim, other = info["replicas"][1], info["replicas"][0]
    url = client.url
    # the victim alone (the other is frozen, so not routed to) takes a JSON request and a stream: 6 prompts
    # for 4 running slots, so the first of them to finish is ~240 steps away when the stream's first token
    # comes and the victim is frozen, keeping all of them in flight
    os.kill(other["pid"], signal.SIGSTOP)
    try:
        assert _health(client) == 503 and not _replica_health(client, 0)["healthy"]
        lost_json: list = []
        json_req = threading.Thread(target=lambda: lost_json.append(httpx.post(
            url + "/generate", json={"prompts": [f"lost {i}" for i in range(5)], "max_new_tokens": 240,
                                     "ignore_eos": True}, timeout=120)))
        json_req.start()
        lost_stream = Stream(url, "lost too", 240, on_first=lambda: os.kill(victim["pid"], signal.SIGSTOP))
        lost_stream.wait_started()
    finally:
        os.kill(other["pid"], signal.SIGCONT)
    try:
        assert lost_json == [] and "[DONE]" not in lost_stream.events
        _wait_until(lambda: _replica_health(client, 0)["healthy"], 30, "replica 0 did not come back from SIGSTOP")
        kept = Stream(url, "kept", 240)             # in flight on the other replica while the victim dies
        kept.wait_started()
    finally:
        os.kill(victim["pid"], signal.SIGKILL)
    json_req.join(60)
    lost_stream.join(60)
    kept.join(60)
    # the victim's requests fail with a clear error ...
    assert lost_json[0].status_code == 503, lost_json[0].text
    message = lost_json[0].json()["error"]["message"]
    assert "replica 1 (cpu) died" in message and "SIGKILL" in message and "lost" in message, message
    error = json.loads(lost_stream.events[-1])["error"]
    assert error["code"] == 503 and "replica 1 (cpu) died" in error["message"], lost_stream.events[-3:]
    # ... and the other replica's stream loses nothing
    assert kept.events[-1] == "[DONE]" and json.loads(kept.events[-2])["response"]["generated_length"] == 240

    dead = _replica_health(client, 1)
    assert not dead["healthy"] and "exited" in dead["detail"] and "SIGKILL" in dead["detail"], dead
    # restarted: /health is 200 again, with a new process for replica 1 on the same device
    _wait_until(lambda: _health(client) == 200, 90, f"replica 1 was not restarted: {_replica_health(client, 1)}")
    now = client.deployment()["replicas"]
    assert now[0]["pid"] == other["pid"] and now[1]["pid"] != victim["pid"] and alive(now[1]["pid"])
    assert now[1]["device"] == "cpu" and now[1]["restarts"] == 1 and now[1]["state"] == "up"
    assert json.loads((deployment[2] / f"{info['name']}.json").read_text())["replica_pids"] == \
        [r["pid"] for r in now]                     # the record follows
    # both replicas serve again: each engine (the new one included) finishes requests
    before = {r["stats"]["pid"]: r["stats"]["engine"]["finished"] for r in client.stats()["replicas"]}
    assert set(before) == {r["pid"] for r in now}
    for i in range(6):
        assert client.generate(f"again {i}", max_new_tokens=3)[0].generated_length >= 1
    after = {r["stats"]["pid"]: r["stats"]["engine"]["finished"] for r in client.stats()["replicas"]}
    assert all(after[pid] >= before[pid] + 2 for pid in before), (before, after)
    metrics = httpx.get(url + "/metrics", timeout=30).text
    assert 'fastgen_replica_restarts_total{replica="1"} 1.0' in metrics
    assert 'fastgen_replica_restarts_total{replica="0"} 0.0' in metrics


def test_a_replica_stopped_on_purpose_is_not_restarted(deployment):
    client = deployment[0]
    pid = client.deployment()["replicas"][1]["pid"]
    os.kill(pid, signal.SIGTERM)                    # drains (nothing in flight) and exits
    _wait_until(lambda: not alive(pid), 30, "the replica did not exit on SIGTERM")
    _wait_until(lambda: "not restarted" in _replica_health(client, 1)["detail"], 10, "no verdict on replica 1")
    time.sleep(1.5)                                 # longer than the first restart's back-off
    r = httpx.get(client.url + "/health", timeout=30)
    assert r.status_code == 503 and "replica 1 (cpu)" in r.json()["detail"], r.json()
    stopped = r.json()["replicas"][1]
    assert stopped["pid"] == pid and stopped["state"] == "stopped" and "SIGTERM" in stopped["detail"], stopped
    assert client.generate("one left", max_new_tokens=3)[0].generated_length >= 1


def test_terminate_drains_in_flight_work_and_stops_every_process(deployment):
    client, info = deployment[:2]
    info = {**info, "replicas": info["replicas"] + client.deployment()["replicas"]}     # restarted ones too
    events, errors = [], []

    def stream():                                   # a raw SSE stream, to see its final Response
        try:
            body = {"prompts": "drain me", "max_new_tokens": 200, "ignore_eos": True, "stream": True}
            with httpx.stream("POST", client.url + "/generate", json=body, timeout=120) as r:
                events.extend(line[6:] for line in r.iter_lines() if line.startswith("data: "))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    t = threading.Thread(target=stream)
    t.start()
    deadline = time.monotonic() + 30
    while not events and time.monotonic() < deadline:
        time.sleep(0.01)
    assert events, "the stream did not start"
    was_running = "[DONE]" not in events
    fg.client(client.url).terminate()               # from a second client, while the stream runs
    t.join(60)
    assert was_running and errors == [] and events[-1] == "[DONE]"
    assert json.loads(events[-2])["response"]["generated_length"] == 200      # drained, not cut off
    pids = [info["pid"]] + [r["pid"] for r in info["replicas"]]
    client._process.wait(30)
    assert [p for p in pids if alive(p)] == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(client.url + "/health", timeout=5)
