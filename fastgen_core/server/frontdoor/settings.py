"""Deployment settings (shared by ``fastgen serve`` and ``fastgen_core.serve``), validated when built."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class ServeSettings:
    """model: HF model directory (None: the embedded default model).
    device / device_map: where replicas run (see placement.plan_devices).
    queue_limit: per replica, requests that may wait beyond the running batch before new ones get 429.
    drain_timeout_s: how long SIGTERM waits for in-flight requests. stall_timeout_s: a step longer than
    this marks the engine loop stuck (/health 503). health_timeout_s: how long the front door waits for a
    replica's /health answer. cpu_threads: torch threads of each CPU replica (None: the cores left after
    one for the HTTP processes, shared among the CPU replicas). max_restarts / restart_window_s: a replica
    whose process dies is restarted, at most max_restarts times within restart_window_s seconds (0: never).
    unhealthy_restart_s: a replica whose process lives but whose /health has said 503 (engine loop dead or
    stuck) or nothing at all, with no 200 answer, for this many seconds is ended and restarted the same way
    (0: never; it then only stays out of routing).
    """

    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    device: str | None = None
    device_map: str | list | None = None
    replicas: int | None = None
    api_key: str | None = None
    deployment_name: str | None = None
    queue_limit: int = 1024
    drain_timeout_s: float = 300.0
    stall_timeout_s: float = 120.0
    health_timeout_s: float = 5.0
    log_level: str = "warning"
    cpu_threads: int | None = None
    max_restarts: int = 5
    restart_window_s: float = 600.0
    unhealthy_restart_s: float = 60.0
    engine_options: dict = field(default_factory=dict)

    def __post_init__(self):
        given = self.model
        if self.model is None:
            from ...default_model import default_model_dir
            self.model = str(default_model_dir())
        else:
            from ...hub import resolve_model      # a Hub id: its cached (or downloaded) snapshot
            self.model = resolve_model(str(self.model))
        self.model = str(Path(self.model).expanduser().resolve())
        if not (Path(self.model) / "config.json").is_file():
            raise ConfigError(f"--model {self.model!r} is not an HF model directory (no config.json in it)")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be an integer in [0, 65535] (0: any free port), got {self.port!r}")
        if self.replicas is not None and (isinstance(self.replicas, bool) or not isinstance(self.replicas, int)
                                          or self.replicas < 1):
            raise ConfigError(f"replicas must be a positive integer, got {self.replicas!r}")
        if isinstance(self.queue_limit, bool) or not isinstance(self.queue_limit, int) or self.queue_limit < 0:
            raise ConfigError(f"queue_limit must be an integer >= 0, got {self.queue_limit!r}")
        if isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            raise ConfigError(f"max_restarts must be an integer >= 0 (restarts of a dead replica within "
                              f"restart_window_s; 0: never restart), got {self.max_restarts!r}")
        for name in ("drain_timeout_s", "stall_timeout_s", "health_timeout_s", "restart_window_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds, got {v!r}")
        v = self.unhealthy_restart_s
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:    # NaN too
            raise ConfigError(f"unhealthy_restart_s must be a number of seconds >= 0 (restart a live replica "
                              f"unhealthy that long; 0: never), got {v!r}")
        if self.deployment_name is None:
            from ...hub import is_hub_id      # a Hub id's name, not its snapshot's commit hash
            named = Path(given).name if given is not None and is_hub_id(str(given)) else Path(self.model).name
            self.deployment_name = re.sub(r"[^A-Za-z0-9._-]", "-", named) or "fastgen"
        if not NAME_RE.match(self.deployment_name):
            raise ConfigError(f"deployment_name must be 1-128 characters of letters, digits, '.', '_' or '-' "
                              f"(it is part of the URL /mii/<name>), got {self.deployment_name!r}")
        if self.cpu_threads is not None and (isinstance(self.cpu_threads, bool) or
                                             not isinstance(self.cpu_threads, int) or self.cpu_threads < 1):
            raise ConfigError(f"cpu_threads must be a positive integer, got {self.cpu_threads!r}")
        if not isinstance(self.engine_options, dict):
            raise ConfigError(f"engine_options must be a dict, got {self.engine_options!r}")
        from ...config import EngineConfig
        EngineConfig.from_kwargs(self.model, device=self.device, **self.engine_options)   # fail here, not in a replica

    def argv(self) -> list[str]:
        """Command-line arguments of ``fastgen serve`` for these settings (the API key goes by environment)."""
        args = ["--model", self.model, "--host", self.host, "--port", str(self.port),
                "--deployment-name", self.deployment_name, "--queue-limit", str(self.queue_limit),
                "--drain-timeout", str(self.drain_timeout_s), "--stall-timeout", str(self.stall_timeout_s),
                "--health-timeout", str(self.health_timeout_s), "--max-restarts", str(self.max_restarts),
                "--restart-window", str(self.restart_window_s), "--unhealthy-restart", str(self.unhealthy_restart_s),
                "--log-level", self.log_level]
        if self.device is not None:
            args += ["--device", self.device]
        if self.device_map is not None:
            dm = self.device_map
            args += ["--device-map", dm if isinstance(dm, str) else json.dumps(dm)]
        if self.replicas is not None:
            args += ["--replicas", str(self.replicas)]
        if self.cpu_threads is not None:
            args += ["--cpu-threads", str(self.cpu_threads)]
        if self.engine_options:
            args += ["--engine-options", json.dumps(self.engine_options)]
        return args

    def env(self) -> dict:
        env = dict(os.environ)
        if self.api_key:
            env["FASTGEN_API_KEY"] = self.api_key
        return env
