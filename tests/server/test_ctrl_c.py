"""Ctrl-C at a terminal signals the whole foreground process group: the front door and every replica get SIGINT
at once. ``fastgen serve`` then drains, stops its replicas and exits 130, and no process prints a traceback. A
replica on its own ends on SIGINT as on SIGTERM: it drains, then exits quietly."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from .conftest import wait_for_record


def start_in_own_group(model_dir, cache, name, log):
    """``fastgen serve`` as a terminal starts it: the leader of its own process group, SIGINT not ignored."""
    cmd = [sys.executable, "-m", "fastgen_core.cli", "serve", "--model", str(model_dir), "--port", "0",
           "--deployment-name", name, "--device", "cpu", "--cpu-threads", "1", "--kv-block-size", "8"]

    def as_a_terminal_does():
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_DFL)     # a background job (`cmd &`, nohup) inherits it ignored
    return subprocess.Popen(cmd, env={**os.environ, "FASTGEN_CACHE": str(cache)}, stderr=log,
                            preexec_fn=as_a_terminal_does)


def ctrl_c(proc, log_path) -> str:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return log_path.read_text(errors="replace")


def gone(pids, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(os.path.exists(f"/proc/{pid}") for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(os.path.exists(f"/proc/{pid}") for pid in pids)


def running(http) -> bool:
    """A request is in the running batch of a replica (its /metrics gauge; the front door's has every replica's)."""
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("fastgen_num_requests_running{") and float(line.split()[-1]) > 0:
            return True
    return False


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "request-in-flight"])
def test_ctrl_c_to_the_process_group_stops_serve_without_a_traceback(tiny_long_model_dir, tmp_path, busy):
    cache, log_path = tmp_path / "cache", tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = start_in_own_group(tiny_long_model_dir, cache, "ctrl-c", log)
    answers = []
    try:
        record = wait_for_record(cache, "ctrl-c", proc)
        if busy:                     # a long generation is running when Ctrl-C comes: it is drained, not cut
            def ask():
                answers.append(httpx.post(record["url"] + "/v1/completions", timeout=120,
                                          json={"prompt": "hello", "max_tokens": 300, "temperature": 0,
                                                "ignore_eos": True}))
            t = threading.Thread(target=ask)
            t.start()
            deadline = time.monotonic() + 30
            while not running(httpx.Client(base_url=record["url"])) and time.monotonic() < deadline:
                time.sleep(0.05)
        err = ctrl_c(proc, log_path)
        if busy:
            t.join(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "fastgen serve: interrupted", err
    assert gone(record["replica_pids"])
    if busy:
        assert answers and answers[0].status_code == 200, answers
        assert answers[0].json()["usage"]["completion_tokens"] == 300


def test_ctrl_c_while_the_replicas_load_stops_serve_without_a_traceback(tiny_long_model_dir, tmp_path):
    cache, log_path = tmp_path / "cache", tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = start_in_own_group(tiny_long_model_dir, cache, "ctrl-c-early", log)
    time.sleep(3)                    # the replica is importing torch or loading the model by now
    assert proc.poll() is None
    err = ctrl_c(proc, log_path)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert proc.returncode == 130, err
    assert not (cache / "deployments" / "ctrl-c-early.json").exists()


def test_a_replica_drains_on_sigint_and_exits_without_a_traceback(tiny_long_model_dir, tmp_path):
    """The replica process alone (as the front door starts it), so nothing else stops it first."""
    sock, log_path = str(tmp_path / "r.sock"), tmp_path / "replica.log"
    cmd = [sys.executable, "-m", "fastgen_core.server.replica.main", "--model", str(tiny_long_model_dir),
           "--name", "alone", "--socket", sock, "--device", "cpu", "--threads", "1",
           "--engine-options", json.dumps({"kv_block_size": 8})]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stderr=log, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    http = httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://replica", timeout=120)
    answers = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            try:
                if http.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        t = threading.Thread(target=lambda: answers.append(http.post("/v1/completions", json={
            "prompt": "hello", "max_tokens": 300, "temperature": 0, "ignore_eos": True})))
        t.start()
        while not running(http) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
        t.join(120)
    finally:
        if proc.poll() is None:
            proc.kill()
        http.close()
    err = log_path.read_text(errors="replace")
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert proc.returncode == -signal.SIGINT, err          # ended by the signal, as SIGTERM ends it
    assert answers and answers[0].status_code == 200 and answers[0].json()["usage"]["completion_tokens"] == 300
