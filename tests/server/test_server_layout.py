"""The server's shape: the client imports no torch; a replica's lifecycle (front door side) is one state that
changes only along its allowed transitions, a forbidden one raises, and every transition the supervisor's code
makes is one of them, seen on real (stand-in) replica processes: started, killed and restarted, stopped on
purpose, out of restarts, failing to restart, and dying while the deployment stops."""
import ast
import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastgen_core.server.frontdoor import supervisor
from fastgen_core.server.frontdoor.lifecycle import TRANSITIONS, Lifecycle, ReplicaState, ReplicaStateError
from fastgen_core.server.frontdoor.supervisor import ReplicaSet

FRONTDOOR = Path(supervisor.__file__).parent


@pytest.mark.parametrize("module", ["fastgen_core.server.client", "fastgen_core.server.frontdoor.deployment"])
def test_the_client_imports_no_torch(module):
    code = (f"import sys, {module}; from fastgen_core.server.client import Client; "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'pydantic')); "
            "print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"importing {module} imports {r.stdout.strip()}"


def test_allowed_transitions_move_and_forbidden_ones_raise_naming_the_states():
    for a, b in itertools.product(ReplicaState, repeat=2):
        life = Lifecycle()
        life.state = a                         # set up the state under test (the code only moves with to())
        if b in TRANSITIONS[a]:
            life.to(b, "why")
            assert (life.state, life.note, life.history) == (b, "why", [(a, b)])
        else:
            with pytest.raises(ReplicaStateError, match=f"from '{a.value}' to '{b.value}'; from '{a.value}' it may "
                                                        "go to"):
                life.to(b)
            assert life.state is a and life.history == []
    assert Lifecycle().state is ReplicaState.STARTING
    assert not TRANSITIONS[ReplicaState.STOPPED] and not TRANSITIONS[ReplicaState.FAILED]     # ends


def _targets_named_in_the_code() -> set[ReplicaState]:
    """Every state a ``<something>.lifecycle.to(STATE, ...)`` call in the front door's code moves to."""
    names = {s.name for s in ReplicaState}
    found = set()
    for path in FRONTDOOR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "to"
                    and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "lifecycle"):
                continue
            arg = node.args[0]
            name = arg.attr if isinstance(arg, ast.Attribute) else getattr(arg, "id", None)
            assert name in names, f"{path.name}:{node.lineno}: lifecycle.to({ast.unparse(arg)}) is not a ReplicaState"
            found.add(ReplicaState[name])
    return found


# a replica process as the front door sees one: /health answers 200 on the Unix socket; SIGTERM exits 0
STAND_IN = r'''
import asyncio, signal, sys

async def serve(reader, writer):
    try:
        while await reader.readline():
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            body = b'{"status": "ok", "detail": "ok"}'
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()

async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with await asyncio.start_unix_server(serve, sys.argv[1]):
        await stop.wait()

asyncio.run(main())
'''


class StandInSet(ReplicaSet):
    def __init__(self, script: Path, **kw):
        super().__init__("m", "n", ["cpu"], {}, 1, 1.0, 1.0, 1.0, "warning", **kw)
        self.script = script

    def _command(self, r, device, threads):
        return [sys.executable, str(self.script), r.socket]


async def _until(rs: ReplicaSet, done, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"not reached in {seconds}s: {rs.replicas[0].state}"
        await rs.check_all()
        await asyncio.sleep(0.05)


def _scenario(tmp_path, name: str) -> list[tuple[ReplicaState, ReplicaState]]:
    """Run one scenario on a one-replica set of stand-in processes; the transitions its replica made."""
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    rs = StandInSet(script, max_restarts=0 if name == "out of restarts" else 5)
    r = rs.replicas[0]

    async def run():
        try:
            await rs.start(60)
            first = r.pid
            if name == "killed and restarted":
                os.kill(first, signal.SIGKILL)
                await _until(rs, lambda: r.state is ReplicaState.UP and r.pid != first and r.healthy)
            elif name == "stopped on purpose":
                os.kill(first, signal.SIGTERM)
                await _until(rs, lambda: r.state is ReplicaState.STOPPED)
            elif name == "out of restarts":
                os.kill(first, signal.SIGKILL)
                await _until(rs, lambda: r.state is ReplicaState.FAILED)
            elif name == "restart fails":
                def spawn(_r):
                    raise OSError("no such interpreter")
                rs._spawn = spawn
                os.kill(first, signal.SIGKILL)
                await _until(rs, lambda: r.state is ReplicaState.FAILED)
                assert "restarting it failed: OSError: no such interpreter" in r.note
            elif name == "dies while the deployment stops":
                os.kill(first, signal.SIGKILL)
                while r.exited() is None:
                    await asyncio.sleep(0.01)
                rs.revive_dead()                   # restarting: its reviver waits out the back-off ...
                rs.stopping = True                 # ... and finds the deployment stopping
                await _until(rs, lambda: r.state is ReplicaState.STOPPED)
        finally:
            await rs.stop()
    asyncio.run(run())
    return r.lifecycle.history


SCENARIOS = {
    "killed and restarted": [("starting", "up"), ("up", "restarting"), ("restarting", "up")],
    "stopped on purpose": [("starting", "up"), ("up", "restarting"), ("restarting", "stopped")],
    "out of restarts": [("starting", "up"), ("up", "restarting"), ("restarting", "failed")],
    "restart fails": [("starting", "up"), ("up", "restarting"), ("restarting", "failed")],
    "dies while the deployment stops": [("starting", "up"), ("up", "restarting"), ("restarting", "stopped")],
}


def test_every_transition_the_supervisor_makes_is_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF_S", 0.05)
    seen = set()
    for i, (name, want) in enumerate(SCENARIOS.items()):
        d = tmp_path / str(i)
        d.mkdir()
        history = _scenario(d, name)
        assert [(a.value, b.value) for a, b in history] == want, name
        seen |= set(history)
    assert all(b in TRANSITIONS[a] for a, b in seen), seen
    # the scenarios reach every state the code moves a replica to: no transition in the code goes unexercised
    assert _targets_named_in_the_code() == {b for _, b in seen}
