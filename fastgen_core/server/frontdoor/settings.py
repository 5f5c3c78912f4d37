"""Deployment settings (shared by ``fastgen serve`` and ``fastgen_core.serve``), validated when built."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import ConfigError
from ..replica.deadline import MAX_TIMEOUT_S

if TYPE_CHECKING:
    from ...config import EngineConfig

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
    (0: never; it then only stays out of routing). request_timeout_s: a request not finished this many seconds
    after it reached its replica is aborted and answered 504 (None: no limit; a request's ``X-Request-Timeout``
    header may ask for less).
    engine_options: the pipeline's options as given; ``engine`` is the EngineConfig validated from them (with
    ``device``), the one form in which they reach the replicas. Give ``engine`` instead to take a config validated
    before (``from_json``).
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
    request_timeout_s: float | None = None
    engine_options: dict = field(default_factory=dict)
    engine: EngineConfig | None = None

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
        v = self.request_timeout_s
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= MAX_TIMEOUT_S):
            raise ConfigError(f"request_timeout_s must be a number of seconds greater than 0 and at most "
                              f"{MAX_TIMEOUT_S:g}, or None (no limit), got {v!r}")
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
        if self.engine is None:
            from ...config import EngineConfig      # fail here, not in a replica
            self.engine = EngineConfig.from_kwargs(self.model, device=self.device, **self.engine_options)
        elif self.engine_options:
            raise ConfigError("give engine_options or engine (an EngineConfig validated before), not both")

    def to_json(self) -> str:
        """These settings as ``serve()`` hands them to its front door process (on its stdin, the API key with them):
        the engine settings as validated (``EngineConfig.to_dict()``), not the options they came from."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("engine_options", "engine")}
        return json.dumps({**d, "engine": self.engine.to_dict()})

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        """The settings ``to_json()`` gave, their engine config taken as it was validated."""
        from ...config import EngineConfig
        d = json.loads(text)
        return cls(**{**d, "engine": EngineConfig.from_dict(d["engine"])})
