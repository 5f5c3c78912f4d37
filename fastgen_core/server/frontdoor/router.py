"""The front door's backend: route each request to the healthy replica with the fewest outstanding
requests (ties rotate), relay its answer byte for byte, and aggregate health, stats and metrics.

A client that disconnects has its upstream connection closed at once; the replica sees the disconnect and
aborts the request in its engine, freeing the KV blocks.

A request is sent to another replica only if it cannot have run: the connection to its replica failed, or
broke while that replica stays alive (it aborts what it got). Requests in flight on a replica whose process
dies are lost (a request may be what killed it): a JSON answer is a 503 saying so, a stream ends with an
in-band error event. The replica is restarted by supervisor.ReplicaSet.monitor, which also ends and restarts a live
replica that stays unhealthy (its requests are lost the same way, the message saying why it was ended).

While the front door drains (drain.py sets ``draining``), new requests are refused with 503 and Retry-After and
/ready says 503; the front door's own refusals are counted with the replicas' (``fastgen_requests_rejected``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from starlette.responses import StreamingResponse

from ..errors import APIError
from ..replica.deadline import HEADER as TIMEOUT_HEADER
from .metrics import RestartCollector, merge_expositions
from .replica_handle import Replica, Verdict
from .supervisor import ReplicaSet

log = logging.getLogger("fastgen.server")
RELAYED_HEADERS = ("content-type", "cache-control", "x-accel-buffering", "retry-after")
DRAINING_RETRY_AFTER_S = 1       # this instance takes nothing new: retry at once, a load balancer sends it elsewhere


class RouterBackend:
    def __init__(self, replicas: ReplicaSet, name: str, model: str):
        self.replicas = replicas
        self.name, self.model = name, model
        self.url: str | None = None
        self._turn = 0
        self._readers: set[asyncio.Task] = set()
        self.draining = False
        self.registry = CollectorRegistry()
        self._routed = Counter("fastgen_router_requests", "Requests the front door sent to each replica.",
                               ["replica"], registry=self.registry)
        self._up = Gauge("fastgen_replica_healthy", "1 if the replica's engine loop is alive and stepping.",
                         ["replica"], registry=self.registry)
        self.registry.register(RestartCollector(replicas))
        self.refusals = CollectorRegistry()      # rendered into the replicas' family of the same name
        self._refused = Counter("fastgen_requests_rejected", "Requests refused before reaching the engine.",
                                ["reason"], registry=self.refusals)

    @property
    def in_flight(self) -> int:
        """Requests sent to a replica whose answer has not been relayed to the end yet."""
        return sum(r.outstanding for r in self.replicas)

    def pick(self, exclude: set) -> Replica | None:
        candidates = [r for r in self.replicas if r.healthy and r not in exclude]
        if not candidates:       # only slow ones (a late health answer under load): better slow than 503
            candidates = [r for r in self.replicas if r.slow and r not in exclude]
        if not candidates:
            return None
        least = min(r.outstanding for r in candidates)
        tied = [r for r in candidates if r.outstanding == least]
        self._turn += 1
        return tied[self._turn % len(tied)]

    async def handle(self, kind: str, body, request, path: str):
        if self.draining:
            self._refused.labels("draining").inc()
            raise APIError(503, "the server is shutting down: it finishes the requests in flight and takes no new "
                                "ones; send the request again (to another instance)",
                           headers={"Retry-After": str(DRAINING_RETRY_AFTER_S)})
        payload = body.model_dump(exclude_unset=True)
        timeout = request.headers.get(TIMEOUT_HEADER)      # the replica checks it and applies it
        headers = {TIMEOUT_HEADER: timeout} if timeout is not None else {}
        tried: set = set()
        while True:
            r = self.pick(tried)
            if r is None:
                self._refused.labels("no_replica").inc()
                details = "; ".join(f"replica {x.index}: {x.detail}" for x in self.replicas)
                raise APIError(503, f"no healthy replica to serve the request ({details})")
            r.outstanding += 1
            try:
                upstream = await self._send(request, r, path, payload, headers)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:     # never reached it: try another
                r.outstanding -= 1
                r.health.mark(Verdict.UNREACHABLE, f"unreachable: {type(e).__name__}: {e}")
                tried.add(r)
                continue
            except httpx.TransportError as e:          # the connection broke after the request was sent
                r.outstanding -= 1
                lost = await self._lost(r, e, "while serving this request")
                if lost is None:                       # the replica lives (and aborted it): try another
                    tried.add(r)
                    continue
                raise APIError(503, lost) from None
            except BaseException:
                r.outstanding -= 1
                raise
            break
        r.routed += 1
        self._routed.labels(str(r.index)).inc()
        headers = {k: v for k, v in upstream.headers.items() if k.lower() in RELAYED_HEADERS}
        return StreamingResponse(self._relay(request, upstream, r), status_code=upstream.status_code,
                                 headers=headers)

    @staticmethod
    async def _send(request, r: Replica, path: str, payload: dict, headers: dict) -> httpx.Response:
        """Send upstream and wait for the answer's headers, unless the client leaves first: a JSON answer
        only starts when generation ends, so the disconnect must be noticed while waiting for it."""
        upstream = r.client.build_request("POST", path, json=payload, headers=headers)
        send = asyncio.ensure_future(r.client.send(upstream, stream=True))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({send, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            left = not send.done()
            if left:
                send.cancel()          # drops the upstream connection: the replica aborts the request
        if left:                       # (send is done only once it has run its cancellation: no result to ask)
            raise APIError(499, "the client closed the connection before the answer was ready")
        return send.result()

    async def _relay(self, request, upstream: httpx.Response, replica: Replica):
        """The replica's answer as it arrives, until it ends or the client leaves.

        Whatever arrived since the last write goes out in one write: when this loop falls behind, a replica's
        stream piles up as many small chunks, and writing them one by one in a single step of the event loop
        to a client that has just left makes asyncio warn about every write past the fifth ("socket.send()
        raised exception.") before it tells the server the connection is lost.

        The task reading upstream is never cancelled (a client that leaves hangs it up, see _hang_up).
        """
        chunks: asyncio.Queue = asyncio.Queue()
        broken: list = []
        gone = object()
        reading = True

        async def pump():
            nonlocal reading
            try:
                async for chunk in upstream.aiter_raw():
                    chunks.put_nowait(chunk)
            except httpx.HTTPError as e:
                broken.append(e)
            finally:
                reading = False
                replica.outstanding -= 1
                chunks.put_nowait(None)
                await upstream.aclose()

        async def watch():
            await _disconnected(request)
            chunks.put_nowait(gone)

        reader = asyncio.ensure_future(pump())
        self._readers.add(reader)              # the loop keeps only weak references to tasks
        reader.add_done_callback(self._readers.discard)
        watcher = asyncio.ensure_future(watch())
        try:
            last = b"\n\n"
            while True:
                batch = [await chunks.get()]
                while not chunks.empty():
                    batch.append(chunks.get_nowait())
                if any(c is gone for c in batch):
                    return
                data = b"".join(c for c in batch if c)
                if data:
                    last = data
                    yield data
                if batch[-1] is None:
                    break
            if broken:
                what = "while streaming this response"
                message = await self._lost(replica, broken[0], what) or \
                    f"{replica.name} broke off the response {what}: {type(broken[0]).__name__}: {broken[0]}"
                log.warning("%s", message)
                if upstream.headers.get("content-type", "").startswith("text/event-stream"):
                    # in-band, as the replica reports its own errors once a stream has started
                    event = json.dumps(APIError(503, message).body(), separators=(",", ":"), ensure_ascii=False)
                    yield (b"" if last.endswith(b"\n\n") else b"\n\n") + f"data: {event}\n\n".encode()
        finally:
            watcher.cancel()
            if reading:                        # unfinished: the replica must see its client leave and abort
                _hang_up(upstream, reader)

    async def _lost(self, r: Replica, error: Exception, what: str) -> str | None:
        """A connection to r broke: if r's process has exited (within a second), mark it down and return the
        message for the requests it took with it; None if it is still alive."""
        for _ in range(20):
            rc = r.exited()
            if rc is not None:
                r.mark_exited(rc)
                return (f"{r.name} died {what} (its process {r.pid} exited: {r.ended(rc)}); the request is "
                        "lost and was not retried: send it again")
            await asyncio.sleep(0.05)
        log.warning("the connection to %s broke %s (%s: %s) but its process lives", r.name, what,
                    type(error).__name__, error)
        return None

    async def _gather_json(self, path: str) -> list:
        async def one(r: Replica):
            if r.exited() is not None:
                return None
            try:
                resp = await r.client.get(path, timeout=self.replicas.health_timeout_s)
                return resp.json() if resp.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                return None
        return await asyncio.gather(*(one(r) for r in self.replicas))

    async def health(self):
        await self.replicas.check_all()
        ok = all(r.healthy for r in self.replicas)
        answer = {"status": "ok" if ok else "unhealthy",
                  "replicas": [{"replica": r.index, "pid": r.pid, "device": r.device, "healthy": r.healthy,
                                "state": r.state, "restarts": r.restarts, "detail": r.detail}
                               for r in self.replicas]}
        if not ok:
            answer["detail"] = "; ".join(f"{r.name}: {r.detail}" for r in self.replicas if not r.healthy)
        return ok, answer

    def ready(self) -> tuple[bool, dict]:
        """Ready while not draining and some replica takes requests (the health monitor's latest word)."""
        if self.draining:
            return False, {"status": "draining", "in_flight": self.in_flight,
                           "detail": "shutting down: finishing the requests in flight, taking no new ones"}
        up = [r.index for r in self.replicas if r.healthy or r.slow]
        if not up:
            return False, {"status": "unavailable", "detail": "no replica is up: " +
                           "; ".join(f"{r.name}: {r.detail}" for r in self.replicas)}
        return True, {"status": "ready", "replicas_up": up}

    async def stats(self) -> dict:
        per = await self._gather_json("/fastgen/stats")
        return {"name": self.name, "replicas": [
            {"replica": r.index, "pid": r.pid, "device": r.device, "healthy": r.healthy, "state": r.state,
             "restarts": r.restarts, "detail": r.detail, "outstanding": r.outstanding, "routed": r.routed,
             "stats": s} for r, s in zip(self.replicas, per)]}

    async def models(self) -> dict:
        for answer in await self._gather_json("/v1/models"):
            if answer is not None:
                return answer
        raise APIError(503, "no replica answered /v1/models")

    async def metrics(self) -> bytes:
        async def one(r: Replica):
            if r.exited() is not None:
                return ""
            try:
                resp = await r.client.get("/metrics", timeout=self.replicas.health_timeout_s)
                return resp.text if resp.status_code == 200 else ""
            except httpx.HTTPError:
                return ""
        texts = await asyncio.gather(*(one(r) for r in self.replicas))
        for r in self.replicas:
            self._up.labels(str(r.index)).set(int(r.healthy))
        own = generate_latest(self.refusals).decode()
        return merge_expositions([t for t in texts if t] + [own], self.registry)

    def deployment(self) -> dict:
        return {"name": self.name, "model": self.model, "url": self.url, "pid": os.getpid(),
                "replicas": [{"replica": r.index, "pid": r.pid, "device": r.device, "state": r.state,
                              "restarts": r.restarts} for r in self.replicas]}


def _hang_up(upstream: httpx.Response, reader: asyncio.Task) -> None:
    """Close an unfinished upstream response without cancelling the task reading it.

    Shutting the socket down makes the replica see its client leave (it aborts the request) and ends the
    pending read as the end of any stream does; the reader then closes the response. Cancelling that read
    instead races anyio's UNIX socket: if data arrives in the same step of the event loop, anyio's reader
    callback completes the cancelled future and asyncio logs "Exception in callback Future.set_result(None)"
    with an InvalidStateError. Cancelling is left for transports that do not expose their socket.
    """
    stream = upstream.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is None:
        reader.cancel()
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:                            # the connection is closed already
        pass


async def _disconnected(request) -> None:
    """Returns when the client has closed its connection."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
