"""A deployment started with fastgen_core.serve: two CPU replicas behind one front door.

The tests run in file order on one deployment: routing, queue limit, a stuck then a dead replica seen by
/health, and finally terminate() draining an in-flight stream and stopping every process.
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

QUEUE_LIMIT, SLOTS = 2, 4          # per replica: 4 running + 2 waiting, then 429


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def deployment(tiny_model_dir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTGEN_CACHE", str(tmp_path_factory.mktemp("fastgen-cache")))
        client = fg.serve(str(tiny_model_dir[0]), deployment_name=f"two-{uuid.uuid4().hex[:6]}", port=0,
                          device="cpu", replicas=2, cpu_threads=1, queue_limit=QUEUE_LIMIT, health_timeout_s=1.0,
                          max_ragged_sequence_count=SLOTS, kv_block_size=8)
        info = client.deployment()
        try:
            yield client, info
        finally:
            if alive(info["pid"]):
                client.terminate()


def test_two_replicas_both_serve_traffic(deployment, pipe):
    client, info = deployment
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
    client, _ = deployment
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


def test_health_is_503_while_a_replica_is_stuck_or_dead(deployment):
    client, info = deployment
    assert _health(client) == 200
    victim = info["replicas"][1]["pid"]
    os.kill(victim, signal.SIGSTOP)                 # a stuck replica: no step, no answer
    try:
        assert _health(client) == 503
    finally:
        os.kill(victim, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while _health(client) != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.kill(victim, signal.SIGKILL)                 # a dead replica
    time.sleep(0.2)
    r = httpx.get(client.url + "/health", timeout=30)
    assert r.status_code == 503
    dead = [x for x in r.json()["replicas"] if x["pid"] == victim][0]
    assert not dead["healthy"] and "exited" in dead["detail"]
    # the survivor keeps serving
    assert all(client.generate("still here", max_new_tokens=3)[0].generated_length >= 1 for _ in range(3))


def test_terminate_drains_in_flight_work_and_stops_every_process(deployment):
    client, info = deployment
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
