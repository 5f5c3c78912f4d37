"""When the front door ends and restarts a live replica, decided on real processes and real HTTP over the
replica socket: a small stand-in replica process answers /health as a test tells it to (200 or 503, at
once or late), so the ReplicaSet's policy is checked without loading a model. The real replicas' stall,
SIGSTOP and restart are in test_server_unhealthy.py."""
import asyncio
import json
import logging
import os
import signal
import sys
import time

import pytest

from fastgen_core.server.frontdoor import supervisor
from fastgen_core.server.frontdoor.supervisor import ReplicaSet

# /health answered as mode-<generation>.json says: [status, delay_s, detail, on_sigterm] ("exit" or "ignore");
# 200 at once when the file is missing. The generation is the replica's restart count when it was started.
STAND_IN = r'''
import asyncio, json, os, signal, sys
sock, mode_dir, gen = sys.argv[1:4]

def mode():
    try:
        with open(os.path.join(mode_dir, f"mode-{gen}.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return [200, 0, "ok", "exit"]

async def serve(reader, writer):
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            status, delay, detail, _ = mode()
            await asyncio.sleep(delay)
            body = json.dumps({"status": "ok" if status == 200 else "unhealthy", "detail": detail}).encode()
            writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                         f"content-length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):     # the client left, or this process exits
        pass
    finally:
        writer.close()

async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGTERM, lambda: None if mode()[3] == "ignore" else stop.set())
    server = await asyncio.start_unix_server(serve, sock)
    async with server:
        await stop.wait()          # SIGTERM: exit 0, as a real replica does after draining

asyncio.run(main())
'''


class StandInSet(ReplicaSet):
    def __init__(self, tmp_path, **kw):
        kw = {"max_restarts": 5, "unhealthy_restart_s": 0.6, **kw}
        super().__init__("m", "n", ["cpu"], {}, 1, 1.0, 1.0, 0.2, "warning", **kw)
        self.script = tmp_path / "stand_in.py"
        self.script.write_text(STAND_IN)
        self.modes = tmp_path
        self.term_grace_s = 0.5
        self.pids: list = []

    def _command(self, r, device, threads):
        return [sys.executable, str(self.script), r.socket, str(self.modes), str(r.restarts)]

    def _spawn(self, r):
        super()._spawn(r)
        self.pids.append(r.pid)

    def set_mode(self, gen: int, status: int, delay: float = 0.0, detail: str = "", on_sigterm: str = "exit"):
        (self.modes / f"mode-{gen}.json").write_text(json.dumps([status, delay, detail, on_sigterm]))


async def _watch(rs: StandInSet, seconds: float, until=None, during=None) -> None:
    """Run the monitor (every 0.1 s) for ``seconds``, or until ``until()``; ``during(rs)`` after each check."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await rs.check_all()
        if during is not None:
            during(rs)
        if until is not None and until():
            return
        await asyncio.sleep(0.1)
    assert until is None, f"not reached in {seconds}s: {rs.replicas[0]}"


def _run(rs: StandInSet, body) -> None:
    async def main():
        try:
            await rs.start(30)
            await body(rs, rs.replicas[0])
        finally:
            for pid in rs.pids:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            await rs.stop()
    asyncio.run(main())


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF_S", 0.05)


STUCK = "engine loop is stuck: no step finished for 121.0s (limit 120.0s)"


@pytest.mark.parametrize("on_sigterm,rc", [("exit", 0), ("ignore", -signal.SIGKILL)])
def test_a_replica_that_says_503_for_unhealthy_restart_s_is_ended_and_restarted(tmp_path, caplog, on_sigterm, rc):
    rs = StandInSet(tmp_path)

    async def body(rs, r):
        first = r.pid
        rs.set_mode(0, 503, detail=STUCK, on_sigterm=on_sigterm)
        seen = []
        await _watch(rs, 10, until=lambda: r.state == "up" and r.pid != first,
                     during=lambda rs: seen.append((rs.replicas[0].state, rs.replicas[0].detail)))
        assert rs.pids == [first, r.pid] and r.restarts == 1 and r.healthy
        assert ("up", f"{STUCK}; unhealthy for 0s, the front door restarts it at 0.6s "
                      "(unhealthy_restart_s)") in seen, seen
        if on_sigterm == "ignore":             # seen during the SIGTERM grace
            assert any(s == "restarting" and d.startswith("the front door is ending it to restart it: unhealthy "
                                                          "for ") and d.endswith(STUCK) for s, d in seen), seen
        # SIGTERM first (it still answers); exiting 0 after it is not "stopped on purpose": it is restarted
        assert r.restart_times and rc == rs.exit_codes[first]

    rs.exit_codes = {}
    real_end = rs._end

    async def end(r, graceful):
        assert graceful                    # it answers: SIGTERM before SIGKILL
        pid = r.pid
        await real_end(r, graceful)
        rs.exit_codes[pid] = r.proc.returncode
    rs._end = end
    with caplog.at_level(logging.WARNING, logger="fastgen.server"):
        _run(rs, body)
    said = caplog.text
    assert f"replica 0 (cpu, pid {rs.pids[0]}) has been unhealthy for" in said and STUCK in said, said
    assert "unhealthy_restart_s=0.6" in said and "SIGTERM, then SIGKILL" in said, said
    assert "not restarting" not in said and "is back" in said, said


def test_a_replica_that_answers_nothing_is_killed_at_once_and_restarted(tmp_path, caplog):
    rs = StandInSet(tmp_path)

    async def body(rs, r):
        first = r.pid
        os.kill(first, signal.SIGSTOP)
        seen = []
        await _watch(rs, 10, until=lambda: r.state == "up" and r.pid != first,
                     during=lambda rs: seen.append(rs.replicas[0].detail))
        assert r.restarts == 1 and r.healthy
        assert any(d.startswith("no health answer from the replica for") and "restarts it at 0.6s" in d
                   for d in seen), seen
        assert any("killed by signal SIGKILL; the front door stopped it: unhealthy for" in d for d in seen), seen
    with caplog.at_level(logging.WARNING, logger="fastgen.server"):
        _run(rs, body)
    assert "SIGKILL, as it answers nothing" in caplog.text, caplog.text


def test_a_busy_replica_whose_health_answers_come_late_is_not_restarted(tmp_path):
    rs = StandInSet(tmp_path)

    async def body(rs, r):
        first = r.pid
        rs.set_mode(0, 200, delay=0.35)   # later than health_timeout_s=0.2, every time
        slow = []
        await _watch(rs, 2.0, during=lambda rs: slow.append(rs.replicas[0].slow))
        assert slow.count(True) >= 3, slow                # it was out of time again and again ...
        assert r.pid == first and r.state == "up" and r.restarts == 0 and r.exited() is None   # ... and kept
    _run(rs, body)


@pytest.mark.parametrize("kw,words", [
    (dict(unhealthy_restart_s=0), None),
    (dict(max_restarts=0), "but not restarted: restarts are off (max_restarts=0)"),
])
def test_an_unhealthy_replica_is_left_running_when_it_may_not_be_restarted(tmp_path, caplog, kw, words):
    rs = StandInSet(tmp_path, **kw)

    async def body(rs, r):
        first = r.pid
        rs.set_mode(0, 503, detail=STUCK)
        await _watch(rs, 1.5)
        assert r.pid == first and r.exited() is None and r.state == "up" and r.restarts == 0 and not r.healthy
        assert r.detail.startswith(STUCK) and (words is None or words in r.detail), r.detail
    with caplog.at_level(logging.WARNING, logger="fastgen.server"):
        _run(rs, body)
    if words is not None:
        assert caplog.text.count("is NOT restarted") == 1, caplog.text     # said once, not every check
