"""The front door process (what ``fastgen serve`` runs): start the replicas, route to them, stop them.

Start-up: replicas first (the front door answers nothing until every replica is healthy), then the
deployment record is written so ``fastgen_core.client(name)`` can find it. SIGTERM (or POST /fastgen/terminate):
/ready turns 503 and new requests get 503 while in-flight requests finish (drain.py), then the replicas get
SIGTERM and are waited for, the record is removed and the process exits 0. SIGINT: uvicorn stops accepting,
waits for in-flight requests, and the rest is the same. A replica whose process dies, or that stays
unhealthy for unhealthy_restart_s, is restarted (supervisor.ReplicaSet.monitor); the record's replica pids
follow.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from contextlib import asynccontextmanager

from ...errors import ConfigError
from .deployment import read_record, remove_record, write_record
from .placement import plan_devices
from .supervisor import ReplicaSet
from .router import RouterBackend
from .settings import ServeSettings

log = logging.getLogger("fastgen.server")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror} (is another server using it? "
                          "--port 0 picks a free port)") from None
    sock.set_inheritable(True)
    return sock


def run_frontdoor(s: ServeSettings) -> int:
    import uvicorn

    from ..app import create_app
    from .drain import DrainingServer
    logging.basicConfig(level=s.log_level.upper(), format="[fastgen] %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)      # one line per proxied request is noise
    old = read_record(s.deployment_name)
    if old is not None:
        raise ConfigError(f"deployment {s.deployment_name!r} is already running at {old['url']} (pid {old['pid']}); "
                          "terminate it or choose another --deployment-name")
    _check_model(s)
    devices = plan_devices(s.device, s.device_map, s.replicas, s.engine.tensor_parallel_size)
    sock = _bind(s.host, s.port)
    port = sock.getsockname()[1]
    url = f"http://{'[' + s.host + ']' if ':' in s.host else s.host}:{port}"
    record: dict = {}

    def rewrite_record(_replica=None) -> None:       # a restarted replica has a new pid
        if record:
            record["replica_pids"] = [r.pid for r in replicas]
            write_record(s.deployment_name, record)

    replicas = ReplicaSet(s.model, s.deployment_name, devices, s.engine.to_dict(), s.queue_limit, s.stall_timeout_s,
                          s.drain_timeout_s, s.health_timeout_s, s.log_level, s.cpu_threads,
                          max_restarts=s.max_restarts, restart_window_s=s.restart_window_s, on_restart=rewrite_record,
                          unhealthy_restart_s=s.unhealthy_restart_s, request_timeout_s=s.request_timeout_s)
    backend = RouterBackend(replicas, s.deployment_name, s.model)
    backend.url = url
    failure: list[str] = []
    server_box: dict = {}

    @asynccontextmanager
    async def lifespan(app):
        try:
            await replicas.start()
        except BaseException as e:
            await replicas.stop()
            if not server_box["server"].should_exit:
                failure.append(str(e))
                raise
            # Ctrl-C or SIGTERM while the replicas loaded (they got it too): stop as after serving, no failure
            yield
            remove_record(s.deployment_name, os.getpid())
            return
        monitor = asyncio.ensure_future(replicas.monitor())
        announce = asyncio.ensure_future(_announce(server_box, s, url, replicas, record))
        try:
            yield
        finally:
            monitor.cancel()
            announce.cancel()
            await replicas.stop()
            remove_record(s.deployment_name, os.getpid())

    # a start-up failure is said once, as "error: ..." below, not also as the lifespan's traceback
    logging.getLogger("uvicorn.error").addFilter(
        lambda rec: not (failure and rec.getMessage().startswith("Traceback")))
    app = create_app(backend, s.deployment_name, s.model, api_key=s.api_key, lifespan=lifespan)
    config = uvicorn.Config(app, log_level=s.log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=s.drain_timeout_s)
    server = server_box["server"] = DrainingServer(config, backend, s.drain_timeout_s)
    try:
        server.run(sockets=[sock])
    except SystemExit:            # uvicorn exits this way when start-up fails; say why below
        pass
    if failure:
        print(f"error: {failure[0]}", file=sys.stderr)
        return 2
    return 0 if server.started else 1


def _check_model(s: ServeSettings) -> None:
    """Refuse a model no installed family can run here, with the registry's message, before any replica."""
    from pathlib import Path

    from ...loader import read_hf_config
    from ...registry import FamilyRegistry
    path = Path(s.model)
    FamilyRegistry().resolve(read_hf_config(path), path, s.engine.family)


async def _announce(server_box, s: ServeSettings, url: str, replicas: ReplicaSet, record: dict) -> None:
    """Write the deployment record once uvicorn is accepting connections."""
    server = server_box["server"]
    while not server.started:
        await asyncio.sleep(0.02)
    record.update({"name": s.deployment_name, "url": url, "pid": os.getpid(), "model": s.model,
                   "replica_pids": [r.pid for r in replicas], "started": time.time()})
    write_record(s.deployment_name, record)
    print(f"fastgen: deployment {s.deployment_name!r} serving {s.model} at {url} with {len(replicas.replicas)} "
          f"replica(s) on {[r.device for r in replicas]}", file=sys.stderr, flush=True)
