"""One replica process: load the engine, start its loop thread, serve the API on a Unix socket.

Started by the front door (frontdoor/supervisor.py) as ``python -m fastgen_core.server.replica.main --config FILE
...``: FILE is the front door's validated EngineConfig with this replica's device (``EngineConfig.to_dict()``), rebuilt
here as it is. Run by hand, ``--model``, ``--device`` and ``--engine-options JSON`` give the config. SIGTERM drains
in-flight requests (uvicorn's graceful shutdown), then stops the loop and closes the engine (with its
tensor-parallel workers). SIGINT does the same: Ctrl-C at a terminal reaches every process of ``fastgen serve``,
the replicas too, and a replica ends quietly on it whatever it was doing (``_quiet_sigint``). The replica also
exits when its front door disappears, so a killed front door never leaves engines holding devices.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from contextlib import asynccontextmanager


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m fastgen_core.server.replica.main")
    p.add_argument("--config", default=None, help="the engine config as JSON (EngineConfig.to_dict()), from the "
                                                   "front door")
    p.add_argument("--model", default=None, help="without --config")
    p.add_argument("--name", required=True)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--device", default=None, help="without --config")
    p.add_argument("--socket", required=True)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--queue-limit", type=int, default=1024)
    p.add_argument("--stall-timeout", type=float, default=120.0)
    p.add_argument("--drain-timeout", type=float, default=300.0)
    p.add_argument("--request-timeout", type=float, default=None, help="seconds a request may take (default: no limit)")
    p.add_argument("--engine-options", default=None, help="without --config: the pipeline's options as JSON")
    p.add_argument("--parent-pid", type=int, default=None)
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    if args.config is not None and (args.model, args.device, args.engine_options) != (None, None, None):
        p.error("--config holds the model, device and engine options: give it or them, not both")
    if args.config is None and args.model is None:
        p.error("give --config, or --model (with --device and --engine-options if needed)")
    return args


def _exit_with_parent(parent_pid: int) -> None:
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="fastgen-parent-watch", daemon=True).start()


def _quiet_sigint() -> None:
    """SIGINT ends this process as SIGTERM does, never with a KeyboardInterrupt traceback.

    While uvicorn serves, it catches both signals and drains; afterwards it raises the caught signal again with
    the handler found at start-up, and Python's handler would turn a SIGINT into a KeyboardInterrupt from
    ``run()``. The default action (the process ends, killed by SIGINT) is what SIGTERM's is, and it is what a
    SIGINT while the model loads does too. An ignored SIGINT (a background job) stays ignored."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def main(argv=None) -> int:
    _quiet_sigint()
    args = _parse(argv)
    logging.basicConfig(level=args.log_level.upper(), format=f"[replica {args.index}] %(levelname)s %(message)s")
    if args.parent_pid:
        _exit_with_parent(args.parent_pid)
    import torch
    import uvicorn

    from ...config import EngineConfig
    from ...engine.engine import LLMEngine
    from ..app import create_app
    from .engine_loop import EngineLoop
    from .local import LocalBackend, ModelInfo
    from .metrics import ReplicaMetrics
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.config is not None:     # as the front door validated it (the model a local directory already)
        with open(args.config) as f:
            engine_config = EngineConfig.from_dict(json.load(f))
    else:
        options = json.loads(args.engine_options or "{}")
        engine_config = EngineConfig.from_kwargs(args.model, device=args.device, **options)
    logging.getLogger("fastgen.server").info("engine config: %s", json.dumps(engine_config.to_dict()))
    engine = LLMEngine(engine_config)
    if args.index == 0 and engine.kernel_plan is not None:     # the replicas' plans are the same
        print("\n".join(f"[replica {args.index}] {line}" for line in engine.kernel_plan.describe()), file=sys.stderr,
              flush=True)
    holder = {}
    metrics = ReplicaMetrics(args.index, lambda: holder["loop"].snapshot)
    loop = holder["loop"] = EngineLoop(engine, metrics, stall_timeout_s=args.stall_timeout)
    info = ModelInfo(args.name, engine_config.model, engine.max_context, int(time.time()))
    backend = LocalBackend(loop, info, metrics, args.queue_limit, args.index, request_timeout_s=args.request_timeout)

    @asynccontextmanager
    async def lifespan(app):
        loop.start()
        yield
        # uvicorn has drained the HTTP requests by now. Closing the engine stops its tensor-parallel workers
        # before this process exits: uvicorn re-raises the SIGTERM it caught, so no atexit handler runs. Not
        # under a step that still runs (it is stuck): a worker whose parent is gone exits by itself.
        if loop.stop():
            engine.close()

    app = create_app(backend, args.name, engine_config.model, lifespan=lifespan)
    config = uvicorn.Config(app, uds=args.socket, log_level=args.log_level, access_log=False,
                            timeout_graceful_shutdown=args.drain_timeout, lifespan="on")
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
