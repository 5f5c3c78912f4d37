"""The replica processes, supervised: started, watched, restarted, stopped (``ReplicaSet``).

Each replica runs ``fastgen_core.server.replica.main`` (started by launcher.module_command) serving the full API on a Unix socket in a
private (0700) directory, so only the front door can reach it and no port can clash. Its engine config, the front
door's validated one with the replica's device, is a JSON file beside the socket (``--config``). A replica's state
changes only along lifecycle.TRANSITIONS.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from ...errors import FastgenError
from .launcher import module_command
from .lifecycle import ReplicaState
from .placement import child_device_env
from .replica_handle import Replica

log = logging.getLogger("fastgen.server")

RESTART_BACKOFF_S = 1.0          # wait before the first restart of a replica in a window; doubles for each next one
RESTART_BACKOFF_MAX_S = 30.0
DELIBERATE_EXITS = (0, -signal.SIGTERM, -signal.SIGINT)    # asked to stop (it drains first): not restarted
TERM_GRACE_S = 3.0               # an unhealthy replica that still answers gets SIGTERM, then SIGKILL after this
UP, RESTARTING, STOPPED, FAILED = ReplicaState.UP, ReplicaState.RESTARTING, ReplicaState.STOPPED, ReplicaState.FAILED


def restart_refusal(r: Replica, now: float, max_restarts: int, window_s: float) -> str | None:
    """Why r may not be restarted now (out of restarts within the window), or None if it may.
    Forgets restarts older than the window."""
    r.restart_times = [t for t in r.restart_times if now - t < window_s]
    done = len(r.restart_times)
    if done < max_restarts:
        return None
    if max_restarts == 0:
        return "restarts are off (max_restarts=0)"
    times = "once" if done == 1 else f"{done} times"
    return (f"it was restarted {times} within {window_s:g}s (max_restarts={max_restarts}, "
            f"restart_window_s={window_s:g})")


class ReplicaSet:
    """The replica processes. ``monitor()`` keeps their health flags fresh and restarts a replica whose
    process died (SIGKILL, a crash, a non-zero exit), with the same arguments and device, after a back-off
    (1 s, doubling per restart within ``restart_window_s``, at most 30 s). A replica restarted
    ``max_restarts`` times within ``restart_window_s`` seconds is left down, and so is one that exited on
    purpose (exit code 0, SIGTERM or SIGINT: it drained first), or that dies while the set is stopping.

    A replica whose process lives but has been unhealthy for ``unhealthy_restart_s`` seconds (0: never) is
    ended and restarted the same way: unhealthy means its own /health said 503 (engine loop dead or
    stuck) or nothing at all, and no check in that time got a 200, however late (a busy replica whose
    answers come after ``health_timeout_s`` is not restarted). One that still answers gets SIGTERM, then
    SIGKILL after TERM_GRACE_S; one that answers nothing gets SIGKILL. It is left running (out of routing)
    if it could not be restarted (out of restarts)."""

    def __init__(self, model: str, name: str, devices: list[str], engine: dict, queue_limit: int,
                 stall_timeout_s: float, drain_timeout_s: float, health_timeout_s: float, log_level: str,
                 cpu_threads: int | None = None, max_restarts: int = 5, restart_window_s: float = 600.0,
                 startup_timeout_s: float = 900.0, on_restart=None, unhealthy_restart_s: float = 60.0,
                 request_timeout_s: float | None = None):
        self.model, self.name = model, name
        self.engine = engine        # the front door's validated EngineConfig, as EngineConfig.to_dict() gives it
        self.queue_limit, self.stall_timeout_s = queue_limit, stall_timeout_s
        self.drain_timeout_s, self.health_timeout_s = drain_timeout_s, health_timeout_s
        self.log_level, self.cpu_threads = log_level, cpu_threads
        self.max_restarts, self.restart_window_s = max_restarts, restart_window_s
        self.unhealthy_restart_s, self.request_timeout_s = unhealthy_restart_s, request_timeout_s
        self.term_grace_s, self.startup_timeout_s = TERM_GRACE_S, startup_timeout_s
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
        """r's argv; its engine config (a copy of the front door's with r's device) goes in its file first."""
        config = os.path.join(self.dir, f"replica-{r.index}.config.json")
        Path(config).write_text(json.dumps({**self.engine, "device": device}))
        return module_command("fastgen_core.server.replica.main", "--config", config, "--name", self.name,
                              "--index", str(r.index), "--socket", r.socket, "--threads", str(threads),
                              "--queue-limit", str(self.queue_limit), "--stall-timeout", str(self.stall_timeout_s),
                              "--drain-timeout", str(self.drain_timeout_s), "--parent-pid", str(os.getpid()),
                              "--log-level", self.log_level,
                              *(["--request-timeout", str(self.request_timeout_s)] if self.request_timeout_s else []))

    def _spawn(self, r: Replica) -> None:
        """Start r's process (first start or restart: same command, same device) with a fresh client."""
        device, env = child_device_env(r.device, self.engine.get("tensor_parallel_size", 1))
        r.launch(self._command(r, device, self.threads), env)

    async def start(self, timeout_s: float | None = None) -> None:
        timeout_s = self.startup_timeout_s if timeout_s is None else timeout_s
        for r in self.replicas:
            self._spawn(r)
        outcome, which = await self._wait_healthy(self.replicas, time.monotonic() + timeout_s)
        if outcome == "exited":
            r = which[0]
            raise FastgenError(f"{r.name} exited while starting ({r.ended(r.exited())}); the whole of its "
                               "error is in the log above")
        if outcome != "up":
            raise FastgenError(f"replicas {[r.index for r in which]} did not become healthy in {timeout_s}s")
        for r in self.replicas:
            r.lifecycle.to(UP)

    async def check_all(self) -> None:
        self.revive_dead()
        await asyncio.gather(*(r.check(self.health_timeout_s) for r in self.replicas))
        self.restart_unhealthy()

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
            if r.state is UP and r.exited() is not None:
                r.lifecycle.to(RESTARTING, "the front door is restarting it")
                r.health.down()
                r.reviver = asyncio.ensure_future(self._revive(r))

    def restart_unhealthy(self) -> None:
        """End and restart each live replica unhealthy for unhealthy_restart_s (after check(), which
        keeps ``unhealthy_since``); until then, or if it cannot be restarted, say so in its detail."""
        limit = self.unhealthy_restart_s
        if self.stopping or not limit:
            return
        now = time.monotonic()
        for r in self.replicas:
            h = r.health
            if r.state is not UP or h.healthy or h.unhealthy_since is None or r.exited() is not None:
                continue
            age = now - h.unhealthy_since
            if age < limit:
                h.detail = f"{h.found}; unhealthy for {age:.0f}s, the front door restarts it at {limit:g}s " \
                           "(unhealthy_restart_s)"
                continue
            why_not = restart_refusal(r, now, self.max_restarts, self.restart_window_s)
            if why_not is not None:
                h.detail = f"{h.found}; unhealthy for {age:.0f}s but not restarted: {why_not}"
                if not r.held_back:
                    r.held_back = True
                    log.error("%s has been unhealthy for %.0fs (%s) but is NOT restarted: %s. It stays out of "
                              "routing while it is unhealthy.", r.label(r.pid), age, h.found, why_not)
                continue
            r.killed_because = f"unhealthy for {age:.1f}s (unhealthy_restart_s={limit:g}): {h.found}"
            answered = h.answered
            if answered:
                how = f"SIGTERM, then SIGKILL if it has not exited after {self.term_grace_s:g}s"
            else:
                how = "SIGKILL, as it answers nothing"
            log.error("%s has been unhealthy for %.1fs (unhealthy_restart_s=%g): %s; ending it (%s) to restart "
                      "it", r.label(r.pid), age, limit, h.found, how)
            r.lifecycle.to(RESTARTING, f"the front door is ending it to restart it: {r.killed_because}")
            h.down()
            r.reviver = asyncio.ensure_future(self._revive(r, graceful=answered))

    async def _end(self, r: Replica, graceful: bool) -> None:
        """End a live replica: SIGTERM first if graceful (it drains, then exits), SIGKILL if it has not
        exited after term_grace_s (or at once if not graceful)."""
        if graceful:
            r.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.term_grace_s
            while r.exited() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        if r.exited() is None:
            r.proc.kill()
        await asyncio.to_thread(r.proc.wait)

    async def _revive(self, r: Replica, graceful: bool | None = None) -> None:
        """Restart r until it is back or left down; end its live process first if graceful is not None."""
        try:
            if graceful is not None:
                await self._end(r, graceful)
            while not await self._restart_once(r):
                pass
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a bug here must leave a clear state, not a silent task
            log.exception("restarting %s failed", r.name)
            r.lifecycle.to(FAILED, f"not restarted: restarting it failed: {type(e).__name__}: {e}")

    async def _restart_once(self, r: Replica) -> bool:
        """One restart attempt of a dead replica; True when done (back up, or left down for good)."""
        old_pid, rc = r.pid, r.exited()
        how = r.ended(rc)
        if self.stopping:
            r.lifecycle.to(STOPPED, "the deployment is stopping")
            return True
        if rc in DELIBERATE_EXITS and r.killed_because is None:
            r.lifecycle.to(STOPPED, "it was stopped on purpose, so it is not restarted")
            log.warning("%s stopped (%s); not restarting it", r.label(old_pid), how)
            return True
        now = time.monotonic()
        why = restart_refusal(r, now, self.max_restarts, self.restart_window_s)
        if why is not None:
            r.lifecycle.to(FAILED, f"not restarted: {why}; it stays down until the deployment is restarted")
            log.error("%s died (%s) and is NOT restarted: %s. The deployment runs degraded on the other "
                      "replicas.", r.label(old_pid), how, why)
            return True
        done = len(r.restart_times)
        delay = min(RESTART_BACKOFF_S * 2 ** done, RESTART_BACKOFF_MAX_S)
        attempt = f"restart {done + 1} of at most {self.max_restarts} within {self.restart_window_s:g}s"
        r.lifecycle.explain(f"restarting in {delay:g}s ({attempt})")
        log.error("%s died: %s; restarting it in %gs (%s)", r.label(old_pid), how, delay, attempt)
        await asyncio.sleep(delay)
        if self.stopping:
            r.lifecycle.to(STOPPED, "the deployment is stopping")
            return True
        r.restart_times.append(time.monotonic())
        r.restarts += 1
        old_client = r.client
        self._spawn(r)
        r.lifecycle.explain(f"restarting: new process {r.pid} is starting (replaces pid {old_pid}, {how}; {attempt})")
        if old_client is not None:
            await old_client.aclose()
        started = time.monotonic()
        outcome, _ = await self._wait_healthy([r], started + self.startup_timeout_s)
        if outcome == "up":
            r.lifecycle.to(UP)
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
            log.error("%s: new process %d exited while starting (%s); the whole of its error is in the log above",
                      r.name, r.pid, r.ended(new_rc))
        r.health.down()
        return False

    async def _wait_healthy(self, replicas: list[Replica], deadline: float) -> tuple[str, list[Replica]]:
        """Ask each of these starting replicas' /health until it answers 200 (start-up and restarts).
        Returns ("up", []) once all have; ("exited", [r]) as soon as one's process exits; ("timeout", the
        ones still starting) after the deadline, or ("stopping", them) once the set is stopping."""
        waiting = list(replicas)
        while True:
            for r in list(waiting):
                if r.exited() is not None:
                    return "exited", [r]
                if os.path.exists(r.socket) and await r.probe(self.health_timeout_s):
                    waiting.remove(r)
            if not waiting:
                return "up", []
            if self.stopping:
                return "stopping", waiting
            if time.monotonic() > deadline:
                return "timeout", waiting
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        """SIGTERM every replica (each drains, then exits), SIGKILL what is left after the drain timeout.
        Nothing is restarted from here on."""
        self.stopping = True
        for r in self.replicas:
            if r.health.asking is not None:
                r.health.asking.cancel()
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
