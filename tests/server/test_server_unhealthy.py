"""A live replica that stays unhealthy is ended and restarted (unhealthy_restart_s): one deployment of one
CPU replica with small limits. First the replica's process is frozen (SIGSTOP: it answers nothing), then
only its engine loop thread is frozen (ptrace), so the replica itself reports 503 "engine loop is stuck"
while its HTTP side still answers. Each time it is killed, restarted with a new process, and serves again.
"""
import ctypes
import json
import os
import re
import signal
import threading
import time
import uuid
from contextlib import contextmanager

import httpx
import pytest

import fastgen_core as fg
from fastgen_core.server.client import pid_alive as alive

UNHEALTHY_RESTART_S, HEALTH_TIMEOUT_S, STALL_TIMEOUT_S = 2.0, 0.5, 1.0


def wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.1)


@pytest.fixture(scope="module")
def deployment(tiny_model_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("fastgen-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTGEN_CACHE", str(cache))
        client = fg.serve(str(tiny_model_dir[0]), deployment_name=f"sick-{uuid.uuid4().hex[:6]}", port=0,
                          device="cpu", replicas=1, cpu_threads=1, kv_block_size=8, health_timeout_s=HEALTH_TIMEOUT_S,
                          stall_timeout_s=STALL_TIMEOUT_S, unhealthy_restart_s=UNHEALTHY_RESTART_S)
        info = client.deployment()
        try:
            yield client, cache / "deployments" / f"{info['name']}.log"
        finally:
            if alive(info["pid"]):
                client.terminate()


def _replica(client) -> dict:
    return httpx.get(client.url + "/health", timeout=30).json()["replicas"][0]


def _back_up(client, old_pid: int, restarts: int) -> dict:
    """Waits until /health is 200 again with a new process; returns /fastgen/deployment's replica."""
    wait_until(lambda: httpx.get(client.url + "/health", timeout=30).status_code == 200, 60,
               lambda: f"not restarted: {_replica(client)}")
    now = client.deployment()["replicas"][0]
    assert now["pid"] != old_pid and alive(now["pid"]) and not alive(old_pid), now
    assert now["state"] == "up" and now["restarts"] == restarts and now["device"] == "cpu", now
    assert client.generate("back again", max_new_tokens=4)[0].generated_length >= 1
    assert client.stats()["replicas"][0]["stats"]["pid"] == now["pid"]           # the new engine served it
    return now


def test_a_replica_that_answers_nothing_is_killed_and_restarted(deployment):
    client, log = deployment
    assert client.generate("before", max_new_tokens=3)[0].generated_length >= 1
    pid = client.deployment()["replicas"][0]["pid"]
    os.kill(pid, signal.SIGSTOP)                   # alive, but answers nothing at all
    try:
        wait_until(lambda: not alive(pid), 30, lambda: f"the stopped replica was not killed: {_replica(client)}")
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    _back_up(client, pid, restarts=1)
    said = log.read_text()
    assert f"replica 0 (cpu, pid {pid}) has been unhealthy for" in said, said[-3000:]
    assert "no health answer from the replica" in said and "SIGKILL, as it answers nothing" in said, said[-3000:]


# ---- freezing one thread of a replica: ptrace(PTRACE_SEIZE) + PTRACE_INTERRUPT stops that thread only ----
PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT, WALL = 17, 0x4206, 0x4207, 0x40000000


@contextmanager
def frozen_thread(tid: int):
    """Stop thread ``tid`` (of a descendant process) until the block ends or its process is killed.

    The tracer must reap the thread when it dies, or its process could never be reaped: a background
    thread does. Skips the test where ptrace is not allowed (a container without CAP_SYS_PTRACE may refuse)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long
    if libc.ptrace(PTRACE_SEIZE, tid, None, None) != 0:
        pytest.skip(f"cannot ptrace the engine loop thread here: {os.strerror(ctypes.get_errno())}")
    assert libc.ptrace(PTRACE_INTERRUPT, tid, None, None) == 0, os.strerror(ctypes.get_errno())
    _, status = os.waitpid(tid, WALL)
    assert os.WIFSTOPPED(status), status
    done = threading.Event()

    def reap():
        while not done.is_set():
            try:
                got, status = os.waitpid(tid, WALL | os.WNOHANG)
            except ChildProcessError:
                return
            if got and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
                done.set()
                return
            time.sleep(0.02)
    reaper = threading.Thread(target=reap, daemon=True)
    reaper.start()
    try:
        yield done
    finally:
        if not done.is_set():
            done.set()
            reaper.join()
            libc.ptrace(PTRACE_DETACH, tid, None, None)      # still stopped: let it run again


def test_a_replica_whose_engine_loop_is_stuck_says_503_and_is_restarted(deployment):
    client, log = deployment
    replica = client.stats()["replicas"][0]
    pid, tid = replica["pid"], replica["stats"]["engine_loop_tid"]
    lost: list = []
    with frozen_thread(tid) as reaped:             # the engine loop stops; the replica's HTTP side goes on
        # sent at once, while the replica still counts as healthy: accepted, but the loop never takes it
        request = threading.Thread(target=lambda: lost.append(httpx.post(
            client.url + "/generate", json={"prompts": "never runs", "max_new_tokens": 4}, timeout=120)))
        request.start()
        seen = []
        wait_until(lambda: seen.append(_replica(client)["detail"]) or "engine loop is stuck" in seen[-1], 30,
                   lambda: f"the replica never reported its engine loop stuck: {seen[-5:]}")
        wait_until(reaped.is_set, 30, lambda: f"the stuck replica was not killed: {_replica(client)}")
    request.join(60)
    # the replica's own verdict (503, stuck) ...
    assert re.search(rf"unhealthy for \d+s, the front door restarts it at {UNHEALTHY_RESTART_S:g}s", seen[-1]), seen
    # ... its request fails with a 503 that says what happened ...
    assert lost and lost[0].status_code == 503, lost and lost[0].text
    message = lost[0].json()["error"]["message"]
    assert "replica 0 (cpu) died while serving this request" in message and "killed by signal SIGKILL" in message
    assert "the front door stopped it: unhealthy for" in message and "engine loop is stuck" in message, message
    # ... and it is restarted and serves again
    now = _back_up(client, pid, restarts=2)
    assert json.loads((log.parent / f"{log.stem}.json").read_text())["replica_pids"] == [now["pid"]]
    said = log.read_text()
    assert f"replica 0 (cpu, pid {pid}) has been unhealthy for" in said and "engine loop is stuck" in said
    assert "ending it (SIGTERM, then SIGKILL if it has not exited after 3s)" in said, said[-3000:]
    metrics = httpx.get(client.url + "/metrics", timeout=30).text
    assert 'fastgen_replica_restarts_total{replica="0"} 2.0' in metrics
