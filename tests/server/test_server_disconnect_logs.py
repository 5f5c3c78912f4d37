"""Clients that leave (mid-stream, or before a JSON answer is ready) are aborted at once, and the server keeps
quiet about it: no asyncio warnings about writing to a closed socket, no InvalidStateError tracebacks in its log.

The noise came when the front door had fallen behind its replica (a busy event loop, many streams): a
stream's backlog went out to a client that had just left. The clients here leave in waves while the front
door is briefly stopped (SIGSTOP), which puts it behind the same way on any machine.
"""
import asyncio
import os
import signal
import time

import httpx
import pytest

from .test_server_load import counter

N_CLIENTS = 50
WAVES = 5                   # clients i % WAVES == w leave in wave w
LONG = 4000                 # the model has a 4096-token context: no client's request can finish before it leaves
FREEZE_S = 0.3              # the front door is stopped this long while a wave leaves
NOISE = ("socket.send() raised exception", "InvalidStateError", "Exception in callback")

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP/SIGCONT")


async def one_client(http: httpx.AsyncClient, i: int, streaming: list, leave: list) -> dict:
    body = {"prompt": f"client {i} leaves", "max_tokens": LONG, "temperature": 0, "ignore_eos": True,
            "stream": True}
    events = 0
    async with http.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return {"i": i, "status": r.status_code, "body": (await r.aread()).decode()}
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events += 1
                if events == 2:
                    streaming.append(i)
                if events >= 2 and leave[i % WAVES].is_set():
                    break                      # leaving the block closes the connection mid-stream
    return {"i": i, "status": 200, "events": events}


async def leave_in_waves(front_door_pid: int, streaming: list, leave: list) -> None:
    while len(streaming) < N_CLIENTS:         # everyone has had two events
        await asyncio.sleep(0.01)
    for wave in leave:
        os.kill(front_door_pid, signal.SIGSTOP)
        try:
            wave.set()
            await asyncio.sleep(FREEZE_S)
        finally:
            os.kill(front_door_pid, signal.SIGCONT)
        await asyncio.sleep(FREEZE_S)


async def run_clients(server: dict) -> list[dict]:
    streaming: list = []
    leave = [asyncio.Event() for _ in range(WAVES)]
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server["url"], headers={"Authorization": f"Bearer {server['key']}"},
                                 timeout=60, limits=limits) as http:
        clients = asyncio.gather(*(one_client(http, i, streaming, leave) for i in range(N_CLIENTS)))
        _, results = await asyncio.gather(leave_in_waves(server["proc"].pid, streaming, leave), clients)
    return results


def log_since(server: dict, start: int) -> list[str]:
    with open(server["log"], "rb") as f:
        f.seek(start)
        return f.read().decode(errors="replace").splitlines()


def aborted(http: httpx.Client) -> float:
    return counter(http.get("/metrics").text, "fastgen_requests_total", finish_reason="abort")


def test_clients_leaving_mid_stream_are_aborted_without_noise_in_the_log(logged_long_server):
    server, http = logged_long_server, logged_long_server["http"]
    log_start = server["log"].stat().st_size
    aborted_before = aborted(http)

    results = asyncio.run(run_clients(server))
    assert [r for r in results if r["status"] != 200] == []

    deadline = time.monotonic() + 30           # every leaver aborted in the engine, its KV blocks freed
    while True:
        n = aborted(http) - aborted_before
        engine = http.get("/fastgen/stats").json()["replicas"][0]["stats"]["engine"]
        if n == N_CLIENTS and engine["kv_blocks_used"] == 0 and engine["running"] == 0:
            break
        assert time.monotonic() < deadline, f"{n} of {N_CLIENTS} aborted; engine: {engine}"
        time.sleep(0.1)
    assert counter(http.get("/metrics").text, "fastgen_requests_total", finish_reason="length") == 0

    noise = [line for line in log_since(server, log_start) if any(n in line for n in NOISE)]
    assert noise == [], f"{len(noise)} lines of noise in the server's log, the first ones:\n" + "\n".join(noise[:10])


def test_client_leaving_before_a_json_answer_is_aborted_without_noise_in_the_log(logged_long_server):
    server, http = logged_long_server, logged_long_server["http"]
    log_start = server["log"].stat().st_size
    aborted_before = aborted(http)
    body = {"prompt": "a long wait", "max_tokens": LONG, "temperature": 0, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):     # the client hangs up before the answer is ready
        httpx.post(server["url"] + "/v1/completions", json=body, timeout=httpx.Timeout(60, read=0.5),
                   headers={"Authorization": f"Bearer {server['key']}"})
    deadline = time.monotonic() + 30
    while aborted(http) != aborted_before + 1:
        assert time.monotonic() < deadline, "the abandoned request was not aborted"
        time.sleep(0.1)
    noise = [line for line in log_since(server, log_start) if "Traceback" in line or any(n in line for n in NOISE)]
    assert noise == [], "\n".join(log_since(server, log_start))
