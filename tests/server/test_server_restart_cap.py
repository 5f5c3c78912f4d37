"""Restarts are capped: a replica that crashes when restarted is not restarted forever, and /health names it."""
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest

import fastgen_core as fg
from fastgen_core.server.frontdoor.lifecycle import ReplicaState
from fastgen_core.server.frontdoor.replica_handle import Replica
from fastgen_core.server.frontdoor.supervisor import ReplicaSet


def test_a_replica_that_crashes_on_restart_stays_down_after_max_restarts(tiny_model_dir, tmp_path, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir[0], model)
    monkeypatch.setenv("FASTGEN_CACHE", str(tmp_path / "cache"))
    client = fg.serve(str(model), deployment_name=f"cap-{uuid.uuid4().hex[:6]}", port=0, device="cpu", replicas=1,
                      cpu_threads=1, health_timeout_s=1.0, max_restarts=1, kv_block_size=8)
    try:
        first = client.deployment()["replicas"][0]["pid"]
        (model / "config.json").write_text("{ not json")        # from now on a replica fails while starting
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while True:
            r = httpx.get(client.url + "/health", timeout=30)
            replica = r.json()["replicas"][0]
            if "not restarted" in replica["detail"]:
                break
            assert time.monotonic() < deadline, replica
            time.sleep(0.2)
        assert r.status_code == 503 and r.json()["detail"].startswith("replica 0 (cpu): "), r.json()
        assert replica["state"] == "failed" and replica["restarts"] == 1 and replica["pid"] != first, replica
        assert "exit code 1: " in replica["detail"] and "max_restarts=1" in replica["detail"], replica
        assert "config.json" in replica["detail"], replica      # the replica's own last error line
        time.sleep(2.5)                             # longer than a second restart's back-off: none comes
        replica = httpx.get(client.url + "/health", timeout=30).json()["replicas"][0]
        assert replica["state"] == "failed" and replica["restarts"] == 1, replica
        assert 'fastgen_replica_restarts_total{replica="0"} 1.0' in httpx.get(client.url + "/metrics").text
        refused = httpx.post(client.url + "/generate", json={"prompts": "anyone?"}, timeout=30)
        assert refused.status_code == 503 and "not restarted" in refused.json()["error"]["message"]
        log = (tmp_path / "cache" / "deployments" / f"{client.deployment()['name']}.log").read_text()
        assert "replica 0 (cpu)" in log and "SIGKILL" in log and "NOT restarted" in log, log[-3000:]
    finally:
        client.terminate()


def _dead_replica(code: str) -> tuple[ReplicaSet, Replica]:
    """A replica (of a set with max_restarts=0) whose real process ran ``code`` and ended."""
    rs = ReplicaSet("m", "n", ["cpu"], {}, 1, 1.0, 1.0, 1.0, "warning", max_restarts=0)
    r = rs.replicas[0]
    r.proc = subprocess.Popen([sys.executable, "-c", code])
    r.proc.wait()
    r.lifecycle.to(ReplicaState.UP)
    r.lifecycle.to(ReplicaState.RESTARTING, "the front door is restarting it")     # as revive_dead does
    return rs, r


@pytest.mark.parametrize("code,state,words", [
    ("import os; os.kill(os.getpid(), 9)", "failed", "restarts are off (max_restarts=0)"),
    ("raise SystemExit(3)", "failed", "restarts are off"),
    ("import os; os.kill(os.getpid(), 15)", "stopped", "stopped on purpose"),   # SIGTERM: drained, then exited
    ("pass", "stopped", "stopped on purpose"),
])
def test_which_exits_are_restarted(code, state, words):
    rs, r = _dead_replica(code)
    dead_pid = r.pid
    try:
        assert asyncio.run(rs._restart_once(r)) is True
        assert r.state == state and words in r.note and r.pid == dead_pid and r.restarts == 0
    finally:
        shutil.rmtree(rs.dir, ignore_errors=True)
