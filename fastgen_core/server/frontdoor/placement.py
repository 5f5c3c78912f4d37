"""Where replicas run: one device per replica (its first GPU under tensor parallelism), and the environment
that lets a replica see only its own GPUs."""
from __future__ import annotations

import json
import os

from ...errors import ConfigError


def plan_devices(device: str | None, device_map, replicas: int | None, tensor_parallel_size: int = 1) -> list[str]:
    """One device per replica: its first GPU when each replica is a tensor-parallel engine over
    ``tensor_parallel_size`` GPUs (cuda:k holds k..k+N-1).

    device_map: None or "auto" (every replica on ``device``; without it, GPUs in turn, N per replica, else
    CPU), a list of devices or a comma-separated string ("cuda:0,cuda:2": one replica per entry), or a JSON
    list.
    """
    tp = tensor_parallel_size
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
        if gpus and tp > 1:
            if n * tp > gpus:
                raise ConfigError(f"{n} replica(s) x tensor_parallel_size {tp} need {n * tp} GPUs, {gpus} are "
                                  f"here; allowed: replicas up to {gpus // tp}")
            return [f"cuda:{i * tp}" for i in range(n)]
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


def child_device_env(device: str, tensor_parallel_size: int = 1) -> tuple[str, dict]:
    """A replica on cuda:k sees only its GPUs (CUDA_VISIBLE_DEVICES: k, or k..k+N-1 for a tensor-parallel
    replica), so it cannot touch the others."""
    env = dict(os.environ)
    if device.startswith("cuda:"):
        k = int(device.split(":", 1)[1])
        visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        ids = range(k, k + tensor_parallel_size)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(visible[i] if i < len(visible) else str(i) for i in ids)
        return "cuda:0", env
    return device, env
