"""The engine loop: one thread per replica that owns the engine and calls ``engine.step()``.

HTTP handlers never touch the engine. They put a Submission (a ``prepare(engine)`` function and an
asyncio queue) into the loop's inbox and await events on their queue:

    ("accepted", [request ids]) | ("rejected", exception)      once, first
    ("output", RequestOutput)                                     per generated token
    ("failed", message)                                           the loop died; nothing more will come

The thread only blocks on its inbox when the engine has nothing to do, so handing work over never waits
for a step and a step never waits for HTTP. Events are delivered to the event loop in one
``call_soon_threadsafe`` per step. Per-request timings (queue time, TTFT, inter-token, end-to-end) are
measured here, where the tokens appear, and so is the recent mean service time (first scheduled step to
finish) that a 429's Retry-After is estimated from.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ...engine.engine import PreparedRequest
from ...errors import InvalidRequestError, TensorParallelError

log = logging.getLogger("fastgen.server")
IDLE_WAIT_S = 0.05        # how long an idle loop blocks on its inbox (also its heartbeat period when idle)
WORKER_EXIT_WAIT_S = 2.0  # after a failed step, how long to wait for a tensor-parallel worker to be seen exiting
SERVICE_EMA_WEIGHT = 0.2  # weight of the newest finished request in the recent mean service time
NOT_FINISHED = ("abort", "timeout")       # ended early: their durations say nothing about the service time


@dataclass(eq=False)
class Submission:
    prepare: Callable[[Any], list]      # engine -> [(prompt, SamplingParams) or PreparedRequest], on the loop thread
    events: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    arrival: float = field(default_factory=time.monotonic)
    request_ids: list[str] = field(default_factory=list)


@dataclass
class _Track:
    sub: Submission
    started: float | None = None        # its first scheduled step (None: still waiting)
    first_token: float | None = None
    last_token: float | None = None


class EngineLoop:
    def __init__(self, engine, metrics, stall_timeout_s: float = 60.0):
        self.engine = engine
        self.metrics = metrics
        self.stall_timeout_s = stall_timeout_s
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.tracks: dict[str, _Track] = {}
        self.heartbeat = time.monotonic()
        self.error: str | None = None
        self.recent_service_s: float | None = None     # mean first-step-to-finish of recent requests
        self.snapshot: dict = {**engine.stats(), "alive": False}
        self._dead = False
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._prefix = f"r{os.getpid()}"
        self._thread = threading.Thread(target=self._run, name="fastgen-engine-loop", daemon=True)

    # ---- called from the event loop (never blocks) --------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, sub: Submission) -> None:
        with self._lock:
            if self._dead:
                raise RuntimeError(self.error or "the engine loop has stopped")
            self.inbox.put(("add", sub))

    def cancel(self, sub: Submission, reason: str = "abort") -> None:
        """Abort whatever of ``sub`` is still waiting or running and free its KV blocks: ``abort`` (the client went
        away) or ``timeout`` (its deadline passed), the finish reason its requests are counted under."""
        self.inbox.put(("cancel", (sub, reason)))

    @property
    def thread_id(self) -> int | None:
        """The loop thread's native id (as py-spy, top -H and gdb show threads), once it runs."""
        return self._thread.native_id

    def health(self) -> tuple[bool, str]:
        if self.error is not None:
            return False, f"engine loop died: {self.error}"
        if not self._thread.is_alive():
            return False, "engine loop is not running"
        age = time.monotonic() - self.heartbeat
        if age > self.stall_timeout_s:
            return False, f"engine loop is stuck: no step finished for {age:.1f}s (limit {self.stall_timeout_s}s)"
        return True, "ok"

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the thread; True once it has ended (False: a step still runs after ``timeout``)."""
        self.inbox.put(("stop", None))
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ---- the thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        self.snapshot = {**self.engine.stats(), "alive": True}
        workers = getattr(self.engine, "workers", None)       # rank 0 of a tensor-parallel engine
        try:
            running = True
            while running:
                self.heartbeat = time.monotonic()
                running, worked = self._drain(block=not self.engine.has_unfinished())
                if running and self.engine.has_unfinished():
                    self._step()
                    worked = True
                elif running and workers is not None:
                    workers.check()     # a worker dead while idle: unhealthy now, not at the next request
                if worked:
                    self.snapshot = {**self.engine.stats(), "alive": True}
        except BaseException as e:          # noqa: BLE001 - whatever kills the loop must reach the clients
            self.error = self._cause(e, workers)
            log.exception("engine loop died: %s", self.error)
        finally:
            with self._lock:
                self._dead = True
            self._fail_all(self.error or "the server is shutting down")
            self.snapshot = {**self.snapshot, "alive": False}

    @staticmethod
    def _cause(e: BaseException, workers) -> str:
        """What killed the loop, as clients and /health say it. A tensor-parallel worker killed mid-step fails
        rank 0's all-reduce with gloo's "Connection reset by peer"; the dead worker is the cause to name."""
        if workers is not None and not isinstance(e, TensorParallelError):
            e = workers.dead(WORKER_EXIT_WAIT_S) or e
        return f"{type(e).__name__}: {e}"

    def _drain(self, block: bool) -> tuple[bool, bool]:
        items = []
        try:
            items.append(self.inbox.get(timeout=IDLE_WAIT_S) if block else self.inbox.get_nowait())
            while True:
                items.append(self.inbox.get_nowait())
        except queue.Empty:
            pass
        for kind, value in items:
            if kind == "add":
                self._add(value)
            elif kind == "cancel":
                self._cancel(*value)
            elif kind == "stop":
                return False, True
        return True, bool(items)

    def _add(self, sub: Submission) -> None:
        try:
            pairs = sub.prepare(self.engine)
            prepared = []       # all checked before any is queued: a batch with one bad prompt queues none
            for i, item in enumerate(pairs):
                if isinstance(item, PreparedRequest):      # checked by prepare already (options.py)
                    prepared.append(item)
                    continue
                prompt, params = item
                try:
                    prepared.append(self.engine.prepare_request(prompt, params))
                except InvalidRequestError as e:
                    raise InvalidRequestError(f"prompt {i}: {e}" if len(pairs) > 1 else str(e), param=e.param) from None
        except Exception as e:      # noqa: BLE001 - a bad request must not kill the loop
            if not isinstance(e, InvalidRequestError):
                log.exception("preparing a request failed")
            self._deliver([(sub, ("rejected", e))])
            return
        rids = [self.engine.add_prepared(r, f"{self._prefix}-{next(self._ids)}") for r in prepared]
        sub.request_ids = rids
        for rid in rids:
            self.tracks[rid] = _Track(sub)
        self._deliver([(sub, ("accepted", rids))])

    def _cancel(self, sub: Submission, reason: str) -> None:
        for rid in sub.request_ids:
            tr = self.tracks.get(rid)
            if tr is None:
                continue
            t = self.engine.request_timing(rid) if tr.started is None else None
            started = tr.started is not None or (t is not None and t["first_scheduled"] is not None)
            if self.engine.abort(rid):
                if reason == "timeout":
                    self.metrics.timed_out("running" if started else "waiting")
                self._close(rid, reason, time.monotonic())

    def _step(self) -> None:
        start = time.monotonic()
        for rid, tr in self.tracks.items():     # scheduled in an earlier step without a token yet
            if tr.started is None:
                t = self.engine.request_timing(rid)
                if t is not None and t["first_scheduled"] is not None:
                    tr.started = t["first_scheduled"]
                    self.metrics.queue_time.observe(t["first_scheduled"] - tr.sub.arrival)
        outputs = self.engine.step()
        now = time.monotonic()
        events = []
        for out in outputs:
            tr = self.tracks.get(out.request_id)
            if tr is None:
                continue
            if tr.started is None:              # first scheduled in this very step
                tr.started = start
                self.metrics.queue_time.observe(start - tr.sub.arrival)
            if tr.first_token is None:
                tr.first_token = now
                self.metrics.ttft.observe(now - tr.sub.arrival)
            else:
                self.metrics.itl.observe(now - tr.last_token)
            tr.last_token = now
            if out.finished:
                self._close(out.request_id, out.finish_reason, now)
            events.append((tr.sub, ("output", out)))
        self._deliver(events)

    def _close(self, rid: str, reason: str, now: float) -> None:
        tr = self.tracks.pop(rid)
        self.metrics.finished(reason, now - tr.sub.arrival)
        if reason not in NOT_FINISHED and tr.started is not None:
            took, mean = now - tr.started, self.recent_service_s
            self.recent_service_s = took if mean is None else mean + SERVICE_EMA_WEIGHT * (took - mean)

    def _fail_all(self, message: str) -> None:
        events = [(tr.sub, ("failed", message)) for tr in self.tracks.values()]
        self.tracks.clear()
        while True:                              # submissions that never reached the engine
            try:
                kind, value = self.inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "add":
                events.append((value, ("failed", message)))
        self._deliver(events)

    @staticmethod
    def _deliver(events: list) -> None:
        by_loop: dict = {}
        for sub, ev in events:
            by_loop.setdefault(sub.loop, []).append((sub.events, ev))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:                 # the event loop is closed: nobody is listening
                pass


def _put_all(items) -> None:
    for q, ev in items:
        q.put_nowait(ev)
