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


RESTART_BACKOFF_S = 1.0          # wait before the first restart of a replica in a window; doubles for each next one
RESTART_BACKOFF_MAX_S = 30.0
DELIBERATE_EXITS = (0, -signal.SIGTERM, -signal.SIGINT)    # asked to stop (it drains first): not restarted


def exit_reason(rc: int) -> str:
    """How a process ended, from Popen's returncode (negative: the signal that ended it)."""
    if rc < 0:
        try:
            return f"killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit code {rc}"


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
    # "starting" (first start), "up", "restarting" (dead, being replaced), "stopped" (exited on purpose: not
    # restarted), "failed" (dead and out of restarts: stays down)
    state: str = "starting"
    note: str = ""                 # what the front door does about a dead process, for /health
    restarts: int = 0              # processes started after the first one
    restart_times: list = field(default_factory=list)
    reviver: asyncio.Task | None = None
    extra: dict = field(default_factory=dict)

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

    async def check(self, timeout: float) -> bool:
        """Ask the replica's /health; a dead process, no answer in time, or a 503 all mean unhealthy."""
        rc = self.exited()
        if rc is not None:
            self.healthy, self.slow = False, False
            self.detail = f"replica process {self.pid} exited: {exit_reason(rc)}" + (f"; {self.note}" if self.note
                                                                                      else "")
            return False
        if self.state == "restarting":         # a new process loading its model: the restart task asks it
            self.healthy, self.slow, self.detail = False, False, self.note
            return False
        return await self.probe(timeout)

    async def probe(self, timeout: float) -> bool:
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
    """The replica processes. ``monitor()`` keeps their health flags fresh and restarts a replica whose
    process died (SIGKILL, a crash, a non-zero exit), with the same arguments and device, after a back-off
    (1 s, doubling per restart within ``restart_window_s``, at most 30 s). A replica restarted
    ``max_restarts`` times within ``restart_window_s`` seconds is left down, and so is one that exited on
    purpose (exit code 0, SIGTERM or SIGINT: it drained first), or that dies while the set is stopping."""

    def __init__(self, model: str, name: str, devices: list[str], engine_options: dict, queue_limit: int,
                 stall_timeout_s: float, drain_timeout_s: float, health_timeout_s: float, log_level: str,
                 cpu_threads: int | None = None, max_restarts: int = 5, restart_window_s: float = 600.0,
                 startup_timeout_s: float = 900.0, on_restart=None):
        self.model, self.name = model, name
        self.engine_options = engine_options
        self.queue_limit, self.stall_timeout_s = queue_limit, stall_timeout_s
        self.drain_timeout_s, self.health_timeout_s = drain_timeout_s, health_timeout_s
        self.log_level = log_level
        self.cpu_threads = cpu_threads
        self.max_restarts, self.restart_window_s = max_restarts, restart_window_s
        self.startup_timeout_s = startup_timeout_s
        self.on_restart = on_restart       # called with the Replica once a restarted process is healthy
        self.stopping = False
        self.dir = tempfile.mkdtemp(prefix="fastgen-")
        self.replicas = [Replica(i, d, os.path.join(self.dir, f"replica-{i}.sock")) for i, d in enumerate(devices)]
        cpu = [r for r in self.replicas if not r.device.startswith("cuda")]
        # CPU replicas share the cores (one left for the HTTP processes) instead of each grabbing all of them:
        # oversubscribed torch threads spin and can make a step ten times slower
        self.threads = self.cpu_threads or max(1, ((os.cpu_count() or 1) - 1) // max(1, len(cpu)))

    def __iter__(self):
        return iter(self.replicas)

    def _command(self, r: Replica, device: str, threads: int) -> list[str]:
        return [sys.executable, "-m", "fastgen_core.server.replica", "--model", self.model, "--name", self.name,
                "--index", str(r.index), "--device", device, "--socket", r.socket, "--threads", str(threads),
                "--queue-limit", str(self.queue_limit), "--stall-timeout", str(self.stall_timeout_s),
                "--drain-timeout", str(self.drain_timeout_s), "--engine-options", json.dumps(self.engine_options),
                "--parent-pid", str(os.getpid()), "--log-level", self.log_level]

    def _spawn(self, r: Replica) -> None:
        """Start r's process (first start or restart: same command, same device) with a fresh client."""
        try:
            os.unlink(r.socket)             # a dead process's socket: "ready" means the new one bound it
        except FileNotFoundError:
            pass
        device, env = _child_device_env(r.device)
        r.proc = subprocess.Popen(self._command(r, device, self.threads), env=env)
        r.client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=r.socket), base_url="http://replica",
                                     timeout=None, limits=httpx.Limits(max_connections=None,
                                                                       max_keepalive_connections=256))

    async def start(self, timeout_s: float | None = None) -> None:
        timeout_s = self.startup_timeout_s if timeout_s is None else timeout_s
        for r in self.replicas:
            self._spawn(r)
        deadline = time.monotonic() + timeout_s
        waiting = list(self.replicas)
        while waiting:
            for r in list(waiting):
                rc = r.exited()
                if rc is not None:
                    raise FastgenError(f"{r.name} exited while starting ({exit_reason(rc)}); its error is in the "
                                       "log above")
                if os.path.exists(r.socket) and await r.probe(self.health_timeout_s):
                    r.state = "up"
                    waiting.remove(r)
            if waiting and time.monotonic() > deadline:
                raise FastgenError(f"replicas {[r.index for r in waiting]} did not become healthy in {timeout_s}s")
            if waiting:
                await asyncio.sleep(0.2)

    async def check_all(self) -> None:
        self.revive_dead()
        await asyncio.gather(*(r.check(self.health_timeout_s) for r in self.replicas))

    async def monitor(self, period_s: float = 1.0) -> None:
        """Keep the routing table's health flags fresh (a dead or stuck replica stops getting traffic) and
        restart replicas whose process died."""
        while True:
            await self.check_all()
            await asyncio.sleep(period_s)

    def revive_dead(self) -> None:
        """Start a restart task for each replica whose process died since it was last up."""
        if self.stopping:
            return
        for r in self.replicas:
            if r.state == "up" and r.exited() is not None:
                r.state, r.note = "restarting", "the front door is restarting it"
                r.healthy = False
                r.reviver = asyncio.ensure_future(self._revive(r))

    async def _revive(self, r: Replica) -> None:
        try:
            while not await self._restart_once(r):
                pass
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a bug here must leave a clear state, not a silent task
            log.exception("restarting %s failed", r.name)
            r.state, r.note = "failed", f"not restarted: restarting it failed: {type(e).__name__}: {e}"

    async def _restart_once(self, r: Replica) -> bool:
        """One restart attempt of a dead replica; True when done (back up, or left down for good)."""
        old_pid, rc = r.pid, r.exited()
        how = exit_reason(rc)
        if self.stopping:
            r.state, r.note = "stopped", "the deployment is stopping"
            return True
        if rc in DELIBERATE_EXITS:
            r.state, r.note = "stopped", "it was stopped on purpose, so it is not restarted"
            log.warning("%s stopped (%s); not restarting it", r.label(old_pid), how)
            return True
        now = time.monotonic()
        r.restart_times = [t for t in r.restart_times if now - t < self.restart_window_s]
        done = len(r.restart_times)
        if done >= self.max_restarts:
            times = "once" if done == 1 else f"{done} times"
            why = ("restarts are off (max_restarts=0)" if self.max_restarts == 0 else
                   f"it was restarted {times} within {self.restart_window_s:g}s (max_restarts={self.max_restarts}, "
                   f"restart_window_s={self.restart_window_s:g})")
            r.state, r.note = "failed", f"not restarted: {why}; it stays down until the deployment is restarted"
            log.error("%s died (%s) and is NOT restarted: %s. The deployment runs degraded on the other "
                      "replicas.", r.label(old_pid), how, why)
            return True
        delay = min(RESTART_BACKOFF_S * 2 ** done, RESTART_BACKOFF_MAX_S)
        attempt = f"restart {done + 1} of at most {self.max_restarts} within {self.restart_window_s:g}s"
        r.note = f"restarting in {delay:g}s ({attempt})"
        log.error("%s died: %s; restarting it in %gs (%s)", r.label(old_pid), how, delay, attempt)
        await asyncio.sleep(delay)
        if self.stopping:
            r.state, r.note = "stopped", "the deployment is stopping"
            return True
        r.restart_times.append(time.monotonic())
        r.restarts += 1
        old_client = r.client
        self._spawn(r)
        r.note = f"restarting: new process {r.pid} is starting (replaces pid {old_pid}, {how}; {attempt})"
        if old_client is not None:
            await old_client.aclose()
        started = time.monotonic()
        if await self._wait_healthy(r, started + self.startup_timeout_s):
            r.state, r.note = "up", ""
            log.warning("%s is back: new process %d healthy after %.1fs (replaces pid %d, %s)", r.name, r.pid,
                        time.monotonic() - started, old_pid, how)
            if self.on_restart is not None:
                self.on_restart(r)
            return True
        new_rc = r.exited()
        if new_rc is None:
            log.error("%s: new process %d not healthy within %gs; killing it", r.name, r.pid, self.startup_timeout_s)
            r.proc.kill()
            await asyncio.to_thread(r.proc.wait)
        else:
            log.error("%s: new process %d exited while starting (%s); its error is in the log above", r.name,
                      r.pid, exit_reason(new_rc))
        r.healthy = False
        return False

    async def _wait_healthy(self, r: Replica, deadline: float) -> bool:
        while time.monotonic() < deadline and not self.stopping:
            if r.exited() is not None:
                return False
            if os.path.exists(r.socket) and await r.probe(self.health_timeout_s):
                return True
            await asyncio.sleep(0.2)
        return False

    async def stop(self) -> None:
        """SIGTERM every replica (each drains, then exits), SIGKILL what is left after the drain timeout.
        Nothing is restarted from here on."""
        self.stopping = True
        revivers = [r.reviver for r in self.replicas if r.reviver is not None and not r.reviver.done()]
        for t in revivers:
            t.cancel()
        await asyncio.gather(*revivers, return_exceptions=True)
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
