"""Replica processes: where they run (device plan), starting them, watching them, stopping them.

Each replica is ``python -m fastgen_core.server.replica`` serving the full API on a Unix socket in a
private (0700) directory, so only the front door can reach it and no port can clash.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import httpx

from ..errors import ConfigError, FastgenError

log = logging.getLogger("fastgen.server")


def plan_devices(device: str | None, device_map, replicas: int | None) -> list[str]:
    """One device per replica.

    device_map: None or "auto" (every replica on ``device``; without it, GPUs round-robin, else CPU), a list
    of devices or a comma-separated string ("cuda:0,cuda:1": one replica per entry), or a JSON list.
    """
    if isinstance(device_map, str) and device_map.strip().startswith("["):
        try:
            device_map = json.loads(device_map)
        except json.JSONDecodeError as e:
            raise ConfigError(f"device_map {device_map!r} is not a JSON list: {e}") from None
    if device_map in (None, "auto"):
        n = replicas or 1
        if device is not None:
            return [device] * n
        import torch
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i % gpus}" for i in range(n)] if gpus else ["cpu"] * n
    devices = [d.strip() for d in device_map.split(",")] if isinstance(device_map, str) else list(device_map)
    if not devices or not all(isinstance(d, str) and d for d in devices):
        raise ConfigError(f"device_map must be 'auto', a list of devices or 'cuda:0,cuda:1', got {device_map!r}")
    if replicas is not None and replicas != len(devices):
        if len(devices) != 1:
            raise ConfigError(f"replicas={replicas} but device_map names {len(devices)} devices {devices}; give "
                              "one device per replica, or one device for all of them")
        devices = devices * replicas
    return devices


def _child_device_env(device: str) -> tuple[str, dict]:
    """A replica on cuda:k sees only that GPU (CUDA_VISIBLE_DEVICES), so it cannot touch the others."""
    env = dict(os.environ)
    if device.startswith("cuda:"):
        k = int(device.split(":", 1)[1])
        visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        env["CUDA_VISIBLE_DEVICES"] = visible[k] if k < len(visible) else str(k)
        return "cuda:0", env
    return device, env


@dataclass(eq=False)
class Replica:
    index: int
    device: str
    socket: str
    proc: subprocess.Popen | None = None
    client: httpx.AsyncClient | None = None
    outstanding: int = 0
    routed: int = 0
    healthy: bool = False
    slow: bool = False             # alive but its health answer timed out (busy, or stopped)
    detail: str = "starting"
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def exited(self) -> int | None:
        return self.proc.poll() if self.proc else None

    async def check(self, timeout: float) -> bool:
        """Ask the replica's /health; a dead process, no answer in time, or a 503 all mean unhealthy."""
        rc = self.exited()
        if rc is not None:
            self.healthy, self.slow, self.detail = False, False, f"replica process {self.pid} exited with code {rc}"
            return False
        try:
            r = await self.client.get("/health", timeout=timeout)
            self.healthy, self.slow = r.status_code == 200, False
            self.detail = r.json().get("detail", r.text) if r.headers.get("content-type", "").startswith(
                "application/json") else r.text
        except httpx.TimeoutException:
            self.healthy, self.slow = False, True
            self.detail = f"no health answer from the replica within {timeout}s"
        except (httpx.HTTPError, ValueError) as e:
            self.healthy, self.slow = False, False
            self.detail = f"replica unreachable: {type(e).__name__}: {e}"
        return self.healthy


class ReplicaSet:
    def __init__(self, model: str, name: str, devices: list[str], engine_options: dict, queue_limit: int,
                 stall_timeout_s: float, drain_timeout_s: float, health_timeout_s: float, log_level: str,
                 cpu_threads: int | None = None):
        self.model, self.name = model, name
        self.engine_options = engine_options
        self.queue_limit, self.stall_timeout_s = queue_limit, stall_timeout_s
        self.drain_timeout_s, self.health_timeout_s = drain_timeout_s, health_timeout_s
        self.log_level = log_level
        self.cpu_threads = cpu_threads
        self.dir = tempfile.mkdtemp(prefix="fastgen-")
        self.replicas = [Replica(i, d, os.path.join(self.dir, f"replica-{i}.sock")) for i, d in enumerate(devices)]

    def __iter__(self):
        return iter(self.replicas)

    def _command(self, r: Replica, device: str, threads: int) -> list[str]:
        return [sys.executable, "-m", "fastgen_core.server.replica", "--model", self.model, "--name", self.name,
                "--index", str(r.index), "--device", device, "--socket", r.socket, "--threads", str(threads),
                "--queue-limit", str(self.queue_limit), "--stall-timeout", str(self.stall_timeout_s),
                "--drain-timeout", str(self.drain_timeout_s), "--engine-options", json.dumps(self.engine_options),
                "--parent-pid", str(os.getpid()), "--log-level", self.log_level]

    async def start(self, timeout_s: float = 900.0) -> None:
        cpu = [r for r in self.replicas if not r.device.startswith("cuda")]
        # CPU replicas share the cores (one left for the HTTP processes) instead of each grabbing all of them:
        # oversubscribed torch threads spin and can make a step ten times slower
        threads = self.cpu_threads or max(1, ((os.cpu_count() or 1) - 1) // max(1, len(cpu)))
        for r in self.replicas:
            device, env = _child_device_env(r.device)
            r.proc = subprocess.Popen(self._command(r, device, threads), env=env)
            r.client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=r.socket), base_url="http://replica",
                                         timeout=None, limits=httpx.Limits(max_connections=None,
                                                                           max_keepalive_connections=256))
        deadline = time.monotonic() + timeout_s
        waiting = list(self.replicas)
        while waiting:
            for r in list(waiting):
                rc = r.exited()
                if rc is not None:
                    raise FastgenError(f"replica {r.index} ({r.device}) exited with code {rc} while starting; "
                                       "its error is in the log above")
                if os.path.exists(r.socket) and await r.check(self.health_timeout_s):
                    waiting.remove(r)
            if waiting and time.monotonic() > deadline:
                raise FastgenError(f"replicas {[r.index for r in waiting]} did not become healthy in {timeout_s}s")
            if waiting:
                await asyncio.sleep(0.2)

    async def check_all(self) -> None:
        await asyncio.gather(*(r.check(self.health_timeout_s) for r in self.replicas))

    async def monitor(self, period_s: float = 1.0) -> None:
        """Keep the routing table's health flags fresh (a dead or stuck replica stops getting traffic)."""
        while True:
            await self.check_all()
            await asyncio.sleep(period_s)

    async def stop(self) -> None:
        """SIGTERM every replica (each drains, then exits), SIGKILL what is left after the drain timeout."""
        for r in self.replicas:
            if r.proc and r.proc.poll() is None:
                r.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.drain_timeout_s + 5
        while any(r.proc and r.proc.poll() is None for r in self.replicas) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for r in self.replicas:
            if r.proc and r.proc.poll() is None:
                log.warning("replica %d (pid %d) did not exit after SIGTERM; killing it", r.index, r.pid)
                r.proc.kill()
                r.proc.wait()
            if r.client is not None:
                await r.client.aclose()
        shutil.rmtree(self.dir, ignore_errors=True)
