"""``fastgen serve``: run a deployment in the foreground (front door + replicas) until SIGTERM/Ctrl-C.

Run as a module (``launcher.module_command("fastgen_core.server.cli")``) it is the front door ``fastgen_core.serve()``
starts: the same deployment, its settings (validated by serve()) read as JSON from stdin, none in its argv."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..config import DEFAULT_KV_BLOCK_SIZE, KERNELS_HELP, EngineConfig, api_key_from_env   # defaults: one home
    p.add_argument("--model", default=None, help="HF model directory or Hugging Face Hub id (org/name) (default: the "
                                                  "embedded SmolLM2-135M-Instruct)")
    p.add_argument("--host", default="127.0.0.1", help="address the front door listens on")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed, and in the record)")
    p.add_argument("--device", default=None, help="device of every replica (cpu, cuda, cuda:1)")
    p.add_argument("--device-map", default=None,
                   help="one device per replica: 'auto', 'cuda:0,cuda:1' or a JSON list")
    p.add_argument("--replicas", type=int, default=None, help="engine processes (default: 1, or one per device)")
    p.add_argument("--api-key", default=api_key_from_env(),
                   help="require 'Authorization: Bearer KEY' (default: $FASTGEN_API_KEY; unset: no key)")
    p.add_argument("--deployment-name", default=None, help="name for fastgen_core.client(NAME) and /mii/NAME "
                                                           "(default: the model directory's name)")
    p.add_argument("--queue-limit", type=int, default=1024,
                   help="per replica: requests waiting beyond the running batch before 429")
    p.add_argument("--drain-timeout", type=float, default=300.0,
                   help="seconds SIGTERM waits for in-flight requests (/ready says 503 meanwhile) before exiting")
    p.add_argument("--request-timeout", type=float, default=None,
                   help="seconds a request may take, waiting or running, before it is aborted with 504 (default: no "
                        "limit; a request's X-Request-Timeout header may ask for less)")
    p.add_argument("--stall-timeout", type=float, default=120.0,
                   help="an engine step longer than this makes /health answer 503")
    p.add_argument("--health-timeout", type=float, default=5.0, help="seconds to wait for a replica's /health")
    p.add_argument("--max-restarts", type=int, default=5,
                   help="restart a replica whose process dies at most this many times per --restart-window "
                        "(0: never)")
    p.add_argument("--restart-window", type=float, default=600.0,
                   help="seconds over which --max-restarts counts a replica's restarts")
    p.add_argument("--unhealthy-restart", type=float, default=60.0,
                   help="restart a replica whose process lives but whose health has been 503 (engine loop dead "
                        "or stuck) or unanswered for this many seconds (0: never)")
    p.add_argument("--cpu-threads", type=int, default=None,
                   help="torch threads per CPU replica (default: (cores - 1) / CPU replicas, at least 1)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="of the front door and the replicas")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: the checkpoint's on GPU, "
                                                 "float32 on CPU)")
    p.add_argument("--max-ragged-batch-size", type=int, default=None,
                   help=f"tokens per forward pass (default: {EngineConfig.max_ragged_batch_size})")
    p.add_argument("--num-kv-blocks", type=int, default=None, help="KV cache blocks (default: what the memory allows)")
    p.add_argument("--kv-block-size", type=int, default=None,
                   help=f"tokens per KV block (default: {DEFAULT_KV_BLOCK_SIZE})")
    p.add_argument("--max-context", type=int, default=None, help="longest prompt + output (default: the model's)")
    p.add_argument("--tensor-parallel-size", type=int, default=None,
                   help="each replica shards the model over this many GPUs (--device-map names each one's first)")
    p.add_argument("--kernels", default=None, help=KERNELS_HELP)
    p.add_argument("--engine-options", default=None, help="more pipeline options as a JSON object")


def settings_from_args(args):
    from .frontdoor.settings import ServeSettings
    engine = {}
    if args.engine_options:
        try:
            engine = json.loads(args.engine_options)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--engine-options must be a JSON object: {e}") from None
    for name in ("dtype", "max_ragged_batch_size", "num_kv_blocks", "kv_block_size", "max_context",
                 "tensor_parallel_size", "kernels"):
        if getattr(args, name) is not None:
            engine[name] = getattr(args, name)
    return ServeSettings(model=args.model, host=args.host, port=args.port, device=args.device,
                         device_map=args.device_map, replicas=args.replicas, api_key=args.api_key or None,
                         deployment_name=args.deployment_name, queue_limit=args.queue_limit,
                         drain_timeout_s=args.drain_timeout, stall_timeout_s=args.stall_timeout,
                         health_timeout_s=args.health_timeout, log_level=args.log_level, cpu_threads=args.cpu_threads,
                         max_restarts=args.max_restarts, restart_window_s=args.restart_window,
                         unhealthy_restart_s=args.unhealthy_restart, request_timeout_s=args.request_timeout,
                         engine_options=engine)


def run(args) -> int:
    from . import require_extras
    require_extras()
    from .frontdoor.main import run_frontdoor
    return run_frontdoor(settings_from_args(args))


def run_from_stdin() -> int:
    """The front door of ``fastgen_core.serve()``: ``ServeSettings.to_json()`` on stdin. Errors and Ctrl-C end it as
    they end ``fastgen serve`` (serve() reports the last ``error:`` line of its log)."""
    from ..errors import FastgenError
    from . import require_extras
    try:
        require_extras()
        from .frontdoor.main import run_frontdoor
        from .frontdoor.settings import ServeSettings
        return run_frontdoor(ServeSettings.from_json(sys.stdin.read()))
    except FastgenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastgen serve: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(run_from_stdin())
