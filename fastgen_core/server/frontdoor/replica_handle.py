"""The front door's handle on one replica process: the process, the HTTP client over its socket, its lifecycle
(lifecycle.py) and its health, as the last checks of its /health found it (``Health``)."""
from __future__ import annotations

import asyncio
import collections
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from enum import Enum

import httpx

from ...errors import exit_reason
from .lifecycle import Lifecycle, ReplicaState


class Verdict(str, Enum):
    """What the last health check of a replica found."""

    OK = "ok"                     # 200
    UNHEALTHY = "unhealthy"       # 503: its engine loop is dead or stuck
    SILENT = "silent"             # no answer in time (busy, or stopped): still routed when nothing else is
    UNREACHABLE = "unreachable"   # the connection failed, or the check was cancelled (its client replaced)
    DOWN = "down"                 # its process exited, or it is being restarted


@dataclass
class Health:
    """What the front door knows about a replica's health. ``detail`` is what /health says about it (the
    check's finding, ``found``, plus the front door's plans for it); ``unhealthy_since`` when the checks that
    find it unhealthy began (None while healthy); ``asking``: a /health request not answered yet, which the next
    check waits for rather than sending another (so a late answer still counts), sent at ``asked_at``."""

    verdict: Verdict = Verdict.DOWN
    found: str = "starting"
    detail: str = "starting"
    unhealthy_since: float | None = None
    asking: asyncio.Task | None = None
    asked_at: float = 0.0

    @property
    def healthy(self) -> bool:
        return self.verdict is Verdict.OK

    @property
    def slow(self) -> bool:
        return self.verdict is Verdict.SILENT

    @property
    def answered(self) -> bool:
        """Its last check got an answer (200 or 503), in time or late: it can be asked to stop (SIGTERM)."""
        return self.verdict in (Verdict.OK, Verdict.UNHEALTHY)

    def mark(self, verdict: Verdict, found: str) -> None:
        self.verdict, self.found, self.detail = verdict, found, found

    def down(self) -> None:
        """Out of routing at once (its process is being replaced); what /health says is left as it is."""
        self.verdict = Verdict.DOWN

    def forget(self) -> None:
        """A new process: drop what was asked of the old one and what was known about it."""
        if self.asking is not None:
            self.asking.cancel()
        self.asking, self.unhealthy_since = None, None
        self.verdict = Verdict.DOWN


@dataclass(eq=False)
class Replica:
    index: int
    device: str
    socket: str
    proc: subprocess.Popen | None = None
    client: httpx.AsyncClient | None = None
    outstanding: int = 0           # requests routed to it and not finished
    routed: int = 0
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    health: Health = field(default_factory=Health)
    restarts: int = 0              # processes started after the first one
    restart_times: list = field(default_factory=list)
    reviver: asyncio.Task | None = None    # the task restarting it
    killed_because: str | None = None      # why the front door is ending this live process (to restart it)
    held_back: bool = False        # logged that it is unhealthy but out of restarts (logged once)
    stderr_tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=STDERR_TAIL_LINES))
    stderr_reader: threading.Thread | None = None

    # what /health, /fastgen/stats and the router read
    @property
    def state(self) -> ReplicaState:
        return self.lifecycle.state

    @property
    def note(self) -> str:
        return self.lifecycle.note

    @property
    def healthy(self) -> bool:
        return self.health.healthy

    @property
    def slow(self) -> bool:
        return self.health.slow

    @property
    def detail(self) -> str:
        return self.health.detail

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def name(self) -> str:
        return f"replica {self.index} ({self.device})"

    def label(self, pid: int | None) -> str:
        return f"replica {self.index} ({self.device}, pid {pid})"

    def exited(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def ended(self, rc: int) -> str:
        """How its process ended, and why the front door ended it if it did, or else its last error line."""
        how = exit_reason(rc)
        if self.killed_because:
            return f"{how}; the front door stopped it: {self.killed_because}"
        error = self.last_error()
        return f"{how}: {error}" if error and rc > 0 else how

    def last_error(self) -> str | None:
        """The last line its process wrote to stderr that names an exception (``ImportError: ...``), else its last
        non-empty line; None when it wrote nothing. The whole of it went to the front door's stderr."""
        if self.stderr_reader is not None and self.exited() is not None:
            self.stderr_reader.join(timeout=2.0)        # what it wrote before exiting is read to the end
        lines = [line for line in self.stderr_tail if line.strip()]
        for line in reversed(lines):
            if ERROR_LINE.match(line):
                return line.strip()
        return lines[-1].strip() if lines else None

    def mark_exited(self, rc: int) -> str:
        """Its process has exited: not healthy, and /health says how it ended (returned)."""
        found = f"replica process {self.pid} exited: {self.ended(rc)}"
        self.health.mark(Verdict.DOWN, found)
        return found

    async def check(self, timeout: float) -> bool:
        """Ask the replica's /health; a dead process, no answer in time, or a 503 all mean unhealthy."""
        rc = self.exited()
        if rc is not None:
            found = self.mark_exited(rc)
            self.health.detail = found + (f"; {self.note}" if self.note else "")
            return False
        if self.state is ReplicaState.RESTARTING:   # a new process loading its model: the restart task asks it
            self.health.mark(Verdict.DOWN, self.note)
            return False
        ok = await self.probe(timeout)
        if ok:
            self.health.unhealthy_since, self.held_back = None, False
        elif self.health.unhealthy_since is None:
            self.health.unhealthy_since = self.health.asked_at
        return ok

    async def probe(self, timeout: float) -> bool:
        """Ask /health and wait up to ``timeout`` for the answer. A request not answered in time stays
        outstanding, and the next probe waits for it rather than sending another: so an answer that comes
        late (a busy replica) still counts, and a replica that answers nothing is known to have been silent
        since that request was sent (``asked_at``)."""
        h = self.health
        task = h.asking
        if task is None:
            task = h.asking = asyncio.ensure_future(self.client.get("/health"))
            task.add_done_callback(_consume)
            h.asked_at = time.monotonic()
        asked_at = h.asked_at
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            h.mark(Verdict.SILENT, f"no health answer from the replica for {time.monotonic() - asked_at:.1f}s "
                                   f"(health_timeout_s={timeout:g})")
            return False
        if h.asking is task:
            h.asking = None
        try:
            r = task.result()
            detail = r.json().get("detail", r.text) if r.headers.get("content-type", "").startswith(
                "application/json") else r.text
            h.mark(Verdict.OK if r.status_code == 200 else Verdict.UNHEALTHY, detail)
        except asyncio.CancelledError:              # its client was replaced (a restart)
            h.mark(Verdict.UNREACHABLE, "its health check was cancelled")
        except (httpx.HTTPError, ValueError) as e:
            h.mark(Verdict.UNREACHABLE, f"replica unreachable: {type(e).__name__}: {e}")
        return h.healthy

    def launch(self, command: list[str], env: dict) -> None:
        """Start a (new) process for this replica, with a fresh client over its socket."""
        try:
            os.unlink(self.socket)          # a dead process's socket: "ready" means the new one bound it
        except FileNotFoundError:
            pass
        self.forget_health()
        self.stderr_tail.clear()
        self.proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
        self.stderr_reader = threading.Thread(target=_forward_stderr, args=(self.proc.stderr, self.stderr_tail),
                                              daemon=True, name=f"replica-{self.index}-stderr")
        self.stderr_reader.start()
        self.client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=self.socket), base_url="http://replica",
                                        timeout=None, limits=httpx.Limits(max_connections=None,
                                                                          max_keepalive_connections=256))

    def forget_health(self) -> None:
        """A new process: drop what was asked of the old one and what was known about it."""
        self.health.forget()
        self.killed_because, self.held_back = None, False


STDERR_TAIL_LINES = 50
ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Warning)\b.*")


def _forward_stderr(stream, tail: collections.deque) -> None:
    """Copy a replica's stderr to the front door's, line by line, keeping the last lines for error messages."""
    out = sys.stderr.buffer if hasattr(sys.stderr, "buffer") else None
    with stream:
        for raw in iter(stream.readline, b""):
            tail.append(raw.decode(errors="replace").rstrip("\n"))
            try:
                if out is not None:
                    out.write(raw)
                    out.flush()
                else:
                    sys.stderr.write(raw.decode(errors="replace"))
            except (OSError, ValueError):        # the front door's stderr is gone: keep draining the pipe
                out = None


def _consume(task: asyncio.Task) -> None:
    """Retrieve a health request's error, so one nobody waits for any more is not logged as unretrieved."""
    if not task.cancelled():
        task.exception()
