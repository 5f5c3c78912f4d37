"""The front door's backend: route each request to the healthy replica with the fewest outstanding
requests (ties rotate), relay its answer byte for byte, and aggregate health, stats and metrics.

A client that disconnects has its upstream connection closed at once; the replica sees the disconnect and
aborts the request in its engine, freeing the KV blocks.
"""
from __future__ import annotations

import asyncio
import logging
import os

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge
from starlette.responses import StreamingResponse

from .errors import APIError
from .metrics import merge_expositions
from .replicas import Replica, ReplicaSet

log = logging.getLogger("fastgen.server")
RELAYED_HEADERS = ("content-type", "cache-control", "x-accel-buffering")


class RouterBackend:
    def __init__(self, replicas: ReplicaSet, name: str, model: str):
        self.replicas = replicas
        self.name, self.model = name, model
        self.url: str | None = None
        self._turn = 0
        self.registry = CollectorRegistry()
        self._routed = Counter("fastgen_router_requests", "Requests the front door sent to each replica.",
                               ["replica"], registry=self.registry)
        self._up = Gauge("fastgen_replica_healthy", "1 if the replica's engine loop is alive and stepping.",
                         ["replica"], registry=self.registry)

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
        payload = body.model_dump(exclude_unset=True)
        tried: set = set()
        while True:
            r = self.pick(tried)
            if r is None:
                details = "; ".join(f"replica {x.index}: {x.detail}" for x in self.replicas)
                raise APIError(503, f"no healthy replica to serve the request ({details})")
            r.outstanding += 1
            try:
                upstream = await self._send(request, r, path, payload)
            except httpx.TransportError as e:          # died since the last health check: try another
                r.outstanding -= 1
                r.healthy, r.slow, r.detail = False, False, f"unreachable: {type(e).__name__}: {e}"
                tried.add(r)
                continue
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
    async def _send(request, r: Replica, path: str, payload: dict) -> httpx.Response:
        """Send upstream and wait for the answer's headers, unless the client leaves first: a JSON answer
        only starts when generation ends, so the disconnect must be noticed while waiting for it."""
        send = asyncio.ensure_future(r.client.send(r.client.build_request("POST", path, json=payload), stream=True))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({send, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not send.done():
                send.cancel()          # drops the upstream connection: the replica aborts the request
        if send.cancelled():
            raise APIError(499, "the client closed the connection before the answer was ready")
        return send.result()

    async def _relay(self, request, upstream: httpx.Response, replica: Replica):
        chunks: asyncio.Queue = asyncio.Queue()

        async def pump():
            try:
                async for chunk in upstream.aiter_raw():
                    chunks.put_nowait(chunk)
            except httpx.HTTPError as e:
                log.warning("replica %d broke off a response: %s", replica.index, e)
            finally:
                chunks.put_nowait(None)

        async def watch():
            await _disconnected(request)
            chunks.put_nowait(None)

        tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(watch())]
        try:
            while (chunk := await chunks.get()) is not None:
                yield chunk
        finally:
            for t in tasks:
                t.cancel()
            await upstream.aclose()       # unfinished: closes the connection, so the replica aborts
            replica.outstanding -= 1

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
        return ok, {"status": "ok" if ok else "unhealthy",
                    "replicas": [{"replica": r.index, "pid": r.pid, "healthy": r.healthy, "detail": r.detail}
                                 for r in self.replicas]}

    async def stats(self) -> dict:
        per = await self._gather_json("/fastgen/stats")
        return {"name": self.name, "replicas": [
            {"replica": r.index, "pid": r.pid, "device": r.device, "healthy": r.healthy, "detail": r.detail,
             "outstanding": r.outstanding, "routed": r.routed, "stats": s} for r, s in zip(self.replicas, per)]}

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
        return merge_expositions([t for t in texts if t], self.registry)

    def deployment(self) -> dict:
        return {"name": self.name, "model": self.model, "url": self.url, "pid": os.getpid(),
                "replicas": [{"replica": r.index, "pid": r.pid, "device": r.device} for r in self.replicas]}


async def _disconnected(request) -> None:
    """Returns when the client has closed its connection."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
