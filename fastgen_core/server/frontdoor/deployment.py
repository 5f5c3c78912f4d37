"""``fastgen_core.serve(...)`` and ``fastgen_core.client(name_or_url)``, and the deployment records.

A deployment is a front door process (``fastgen serve``) and its replica processes. It is persistent, as
in DeepSpeed-MII: it keeps running after the Python process that started it exits, until
``client.terminate()`` (or SIGTERM to the front door). Running deployments are recorded by name in
``$FASTGEN_CACHE/deployments/<name>.json`` (default ``~/.cache/fastgen``); the front door's log is next
to it in ``<name>.log`` when started by ``serve()``.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from ...errors import FastgenError
from ..client import pid_alive
from .launcher import module_command


def records_dir() -> Path:
    from ...config import cache_dir
    return cache_dir() / "deployments"


def read_record(name: str) -> dict | None:
    """The record of a running deployment, or None (stale records of dead front doors are ignored)."""
    path = records_dir() / f"{name}.json"
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if pid_alive(rec.get("pid", -1)) else None


def write_record(name: str, record: dict) -> None:
    d = records_dir()
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{name}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(d / f"{name}.json")


def remove_record(name: str, pid: int) -> None:
    path = records_dir() / f"{name}.json"
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


def serve(model: str | None = None, *, deployment_name: str | None = None, host: str = "127.0.0.1",
          port: int = 8000, device: str | None = None, device_map=None, replicas: int | None = None,
          api_key: str | None = None, queue_limit: int = 1024, drain_timeout_s: float = 300.0,
          stall_timeout_s: float = 120.0, health_timeout_s: float = 5.0, startup_timeout_s: float = 900.0,
          log_level: str = "warning", cpu_threads: int | None = None, max_restarts: int = 5,
          restart_window_s: float = 600.0, unhealthy_restart_s: float = 60.0, request_timeout_s: float | None = None,
          **engine_options):
    """Start a deployment (front door + ``replicas`` engine processes) and return a connected Client.

    ``engine_options`` are the pipeline's (max_ragged_batch_size, num_kv_blocks, kv_block_size, dtype, ...).
    ``api_key`` defaults to ``$FASTGEN_API_KEY`` (unset: no key), as for ``fastgen serve``.
    ``port=0`` picks a free port. A replica whose process dies is restarted, at most ``max_restarts`` times
    within ``restart_window_s`` seconds (0: never); so is one whose process lives but whose health has been
    503 (engine loop dead or stuck) or unanswered for ``unhealthy_restart_s`` seconds (0: never). A request not
    finished within ``request_timeout_s`` seconds is aborted and answered 504 (None: no limit). Raises
    FastgenError (with the end of the log) if start-up fails.
    """
    from ...config import api_key_from_env
    from ..client import Client
    from .settings import ServeSettings
    s = ServeSettings(model=model, host=host, port=port, device=device, device_map=device_map, replicas=replicas,
                      api_key=api_key or api_key_from_env() or None, deployment_name=deployment_name,
                      queue_limit=queue_limit, drain_timeout_s=drain_timeout_s, stall_timeout_s=stall_timeout_s,
                      health_timeout_s=health_timeout_s, log_level=log_level, cpu_threads=cpu_threads,
                      max_restarts=max_restarts, restart_window_s=restart_window_s,
                      unhealthy_restart_s=unhealthy_restart_s, request_timeout_s=request_timeout_s,
                      engine_options=engine_options)
    old = read_record(s.deployment_name)
    if old is not None:
        raise FastgenError(f"deployment {s.deployment_name!r} is already running at {old['url']} (pid {old['pid']}); "
                           f"use fastgen_core.client({s.deployment_name!r}) or another deployment_name")
    records_dir().mkdir(parents=True, exist_ok=True)
    log_path = records_dir() / f"{s.deployment_name}.log"
    with open(log_path, "wb") as log:
        # a session of its own: the deployment outlives this process and a Ctrl-C here does not reach it. The
        # settings, validated above, go once on its stdin (the API key with them): none of them in its argv
        proc = subprocess.Popen(module_command("fastgen_core.server.cli"), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.PIPE, start_new_session=True)
    try:
        with proc.stdin:
            proc.stdin.write(s.to_json().encode())
    except BrokenPipeError:
        pass                   # it exited already: its exit code and log say why, below
    deadline = time.monotonic() + startup_timeout_s
    while True:
        rec = read_record(s.deployment_name)
        if rec is not None and rec.get("pid") == proc.pid:
            return Client(rec["url"], api_key=api_key, process=proc)
        rc = proc.poll()
        if rc is not None:
            tail = _tail(log_path)
            said = [line[len("error: "):] for line in tail.splitlines() if line.startswith("error: ")]
            raise FastgenError(f"the deployment exited with code {rc} while starting"
                               f"{': ' + said[-1] if said else ''}; end of {log_path}:\n{tail}")
        if time.monotonic() > deadline:
            proc.terminate()
            proc.wait(30)
            raise FastgenError(f"the deployment did not start within {startup_timeout_s}s; end of {log_path}:\n"
                               f"{_tail(log_path)}")
        time.sleep(0.1)


def client(name_or_url: str, api_key: str | None = None, timeout: float = 600.0):
    """Connect to a running deployment by its name (see ``fastgen serve --deployment-name``) or its URL."""
    from ..client import Client
    if name_or_url.startswith(("http://", "https://")):
        return Client(name_or_url, api_key=api_key, timeout=timeout)
    rec = read_record(name_or_url)
    if rec is None:
        raise FastgenError(f"no running deployment named {name_or_url!r} (records are in {records_dir()}); give "
                           "its URL, or start it with: fastgen serve --deployment-name " + name_or_url)
    return Client(rec["url"], api_key=api_key, timeout=timeout)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
