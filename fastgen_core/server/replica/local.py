"""The replica's backend: admission (429 with Retry-After), hand-over to the engine loop, and per-request handles.

A RequestHandle follows one submission (one or more prompts). It watches the client connection: if the
client goes away, the engine is told to abort at once (freeing the KV blocks), whether the handler is
streaming, waiting for a JSON answer, or still waiting for the request to be accepted. Its deadline
(deadline.py), if it has one, does the same when it passes, and the handler answers 504.
"""
from __future__ import annotations

import asyncio
import math
import os
from dataclasses import dataclass

from ...errors import InvalidRequestError
from .deadline import Deadline, deadline_of
from .engine_loop import EngineLoop, Submission
from ..errors import APIError

RETRY_AFTER_MAX_S = 600          # a 429's Retry-After estimate is capped here


@dataclass
class ModelInfo:
    name: str                      # the served name (the deployment name)
    path: str
    max_context: int
    created: int


class RequestHandle:
    def __init__(self, backend: "LocalBackend", sub: Submission, request, n: int, deadline: Deadline | None = None):
        self.backend, self.sub, self.n = backend, sub, n
        self.pending = n               # prompts not finished yet
        self.disconnected = False
        self.generated = False         # an output has come (the timeout message says where it stopped)
        self.request_ids: list[str] = []
        self.deadline = deadline
        self._watcher = asyncio.ensure_future(self._watch(request))
        self._timer = None if deadline is None else \
            asyncio.get_running_loop().call_later(deadline.seconds, self._expire)

    async def _watch(self, request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        if self.pending:
            self.disconnected = True
            self.backend.loop.cancel(self.sub)
            self.sub.events.put_nowait(("gone", None))

    def _expire(self) -> None:
        if self.pending and not self.disconnected:
            self.backend.loop.cancel(self.sub, "timeout")
            self.sub.events.put_nowait(("timeout", None))

    def _timed_out(self) -> APIError:
        return APIError(504, self.deadline.message(self.generated))

    async def accepted(self) -> None:
        kind, value = await self.sub.events.get()
        if kind == "accepted":
            self.request_ids = value
            return
        self.close()
        if kind == "rejected":
            if isinstance(value, InvalidRequestError):
                raise APIError(400, str(value), param=value.param)
            raise APIError(500, f"could not prepare the request: {type(value).__name__}: {value}")
        if kind == "gone":
            raise APIError(499, "the client closed the connection before the request was accepted")
        if kind == "timeout":
            raise self._timed_out()
        raise APIError(503, f"the engine is not available: {value}")

    async def outputs(self):
        """RequestOutputs until every prompt finished; stops as soon as the client has left (``disconnected``),
        without handing out what the engine produced for it meanwhile."""
        while self.pending:
            kind, value = await self.sub.events.get()
            if self.disconnected:
                return
            if kind == "output":
                self.generated = True
                if value.finished:
                    self.pending -= 1
                    self.backend.outstanding -= 1
                yield value
            elif kind == "gone":
                return
            elif kind == "timeout":
                raise self._timed_out()
            elif kind == "failed":
                raise APIError(503, f"the engine loop failed while generating: {value}")

    async def responses(self):
        """The finished Responses in prompt order, or None if the client went away."""
        done = {}
        async for out in self.outputs():
            if out.finished:
                done[out.request_id] = out.response
        if self.disconnected:
            return None
        return [done[r] for r in self.request_ids]

    @property
    def backlogged(self) -> bool:
        """Events are waiting: the handler has fallen behind the engine."""
        return not self.sub.events.empty()

    def index_of(self, request_id: str) -> int:
        return self.request_ids.index(request_id)

    def close(self) -> None:
        """Idempotent: abort what is unfinished and give its places in the queue back."""
        if self.pending:
            self.backend.loop.cancel(self.sub)
            self.backend.outstanding -= self.pending
            self.pending = 0
        self._watcher.cancel()
        if self._timer is not None:
            self._timer.cancel()


class LocalBackend:
    """Serves requests with the engine loop in this process (one replica)."""

    def __init__(self, loop: EngineLoop, info: ModelInfo, metrics, queue_limit: int, replica: int = 0,
                 request_timeout_s: float | None = None):
        self.loop = loop
        self.info = info
        self.meters = metrics
        self.replica = replica
        self.outstanding = 0
        # running slots + bounded waiting room; beyond that a request is refused with 429
        self.running_slots = loop.engine.config.max_ragged_sequence_count
        self.queue_limit = queue_limit
        self.request_timeout_s = request_timeout_s

    @property
    def capacity(self) -> int:
        return self.running_slots + self.queue_limit

    def retry_after(self, n: int) -> int:
        """Seconds until a refused request of ``n`` prompts could start: the requests waiting ahead of it plus
        its own, times the recent mean service time (1 s before any request has finished), over the running
        slots; rounded up, at least 1, at most RETRY_AFTER_MAX_S."""
        waiting = max(0, self.outstanding - self.running_slots)
        service_s = self.loop.recent_service_s or 1.0
        estimate = math.ceil((waiting + n) * service_s / self.running_slots)
        return max(1, min(RETRY_AFTER_MAX_S, estimate))

    async def open(self, request, prepare, n: int) -> RequestHandle:
        deadline = deadline_of(request, self.request_timeout_s)      # a bad header is a 400 before anything
        ok, why = self.loop.health()
        if not ok:
            self.meters.rejected("unhealthy")
            raise APIError(503, why)
        if self.outstanding + n > self.capacity:
            self.meters.rejected("queue_full")
            wait = self.retry_after(n)
            raise APIError(429, f"server busy: {self.outstanding} requests in flight and this one adds {n}; "
                                f"the limit is {self.capacity} ({self.running_slots} running + queue_limit "
                                f"{self.queue_limit} waiting). Retry in {wait}s (Retry-After).",
                           headers={"Retry-After": str(wait)})
        self.outstanding += n
        sub = Submission(prepare, asyncio.Queue(), asyncio.get_running_loop())
        handle = RequestHandle(self, sub, request, n, deadline)
        try:
            self.loop.submit(sub)
        except RuntimeError as e:
            handle.pending = 0
            self.outstanding -= n
            handle.close()
            raise APIError(503, f"the engine is not available: {e}") from None
        try:
            await handle.accepted()
        except BaseException:
            handle.close()
            raise
        return handle

    async def handle(self, kind: str, body, request, path: str):
        from . import native_api, openai_api
        handlers = {"completions": openai_api.completions, "chat": openai_api.chat_completions,
                    "generate": native_api.generate, "mii": native_api.mii, "tokenize": native_api.tokenize,
                    "detokenize": native_api.detokenize}
        return await handlers[kind](self, body, request)

    def metrics(self) -> bytes:
        return self.meters.render()

    def deployment(self) -> dict:
        return {"name": self.info.name, "model": self.info.path, "pid": os.getpid(), "replica": self.replica}

    def health(self) -> tuple[bool, dict]:
        ok, why = self.loop.health()
        return ok, {"status": "ok" if ok else "unhealthy", "replica": self.replica, "detail": why}

    def stats(self) -> dict:
        ok, why = self.loop.health()
        return {"replica": self.replica, "pid": os.getpid(), "engine_loop_tid": self.loop.thread_id,
                "healthy": ok, "detail": why, "outstanding": self.outstanding, "capacity": self.capacity,
                "recent_service_s": self.loop.recent_service_s, "engine": dict(self.loop.snapshot)}

    def ready(self) -> tuple[bool, dict]:
        """A replica takes new requests while its engine loop is healthy (uvicorn stops it listening on SIGTERM)."""
        ok, why = self.loop.health()
        return ok, {"status": "ready" if ok else "unavailable", "replica": self.replica, "detail": why}

    def models(self) -> dict:
        i = self.info
        return {"object": "list", "data": [{"id": i.name, "object": "model", "created": i.created,
                                            "owned_by": "fastgen", "root": i.path, "max_model_len": i.max_context}]}
