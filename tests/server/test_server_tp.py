"""A deployment whose replica is a tensor-parallel engine (2 CPU ranks): same answers as the in-process
pipeline, and terminate() leaves no worker process behind."""
import argparse
import os
import time
import uuid

import pytest
import torch

import fastgen_core as fg
from fastgen_core.errors import ConfigError
from fastgen_core.server import cli
from fastgen_core.server.client import pid_alive
from fastgen_core.server.frontdoor.placement import child_device_env, plan_devices


def children_of(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def test_a_tensor_parallel_replica_serves_the_pipelines_answers(tiny_model_dir, pipe, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTGEN_CACHE", str(tmp_path / "cache"))
    prompts = ["The capital", "of France", "is a city on the Seine"]
    want = [o.token_ids for o in pipe(prompts, max_new_tokens=6, ignore_eos=True)]
    client = fg.serve(str(tiny_model_dir[0]), deployment_name=f"tp-{uuid.uuid4().hex[:6]}", port=0, device="cpu",
                      cpu_threads=1, kv_block_size=8, tensor_parallel_size=2)
    info = client.deployment()
    replica = info["replicas"][0]["pid"]
    try:
        workers = children_of(replica)
        assert workers, "the replica started no tensor-parallel worker"
        got = [client.generate(p, max_new_tokens=6, ignore_eos=True)[0].token_ids for p in prompts]
        assert got == want
    finally:
        client.terminate()
    deadline = time.monotonic() + 30
    while any(pid_alive(p) for p in [replica, *workers]):
        assert time.monotonic() < deadline, "a replica or tensor-parallel worker outlived terminate()"
        time.sleep(0.2)


def test_tensor_parallel_replicas_get_consecutive_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert plan_devices(None, None, 2, tensor_parallel_size=2) == ["cuda:0", "cuda:2"]
    assert plan_devices(None, None, 3, tensor_parallel_size=1) == ["cuda:0", "cuda:1", "cuda:2"]
    with pytest.raises(ConfigError, match=r"3 replica\(s\) x tensor_parallel_size 2 need 6 GPUs, 4 are here; "
                                          "allowed: replicas up to 2"):
        plan_devices(None, None, 3, tensor_parallel_size=2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6,7")
    device, env = child_device_env("cuda:2", 2)
    assert device == "cuda:0" and env["CUDA_VISIBLE_DEVICES"] == "6,7"
    assert child_device_env("cuda:1")[1]["CUDA_VISIBLE_DEVICES"] == "5"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert child_device_env("cuda:2", 2)[1]["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_serve_cli_passes_tensor_parallel_size(tiny_model_dir):
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    s = cli.settings_from_args(p.parse_args(["--model", str(tiny_model_dir[0]), "--device", "cpu",
                                             "--tensor-parallel-size", "2"]))
    assert s.engine_options["tensor_parallel_size"] == 2
    with pytest.raises(ConfigError, match="tensor_parallel_size must be a positive integer"):
        cli.settings_from_args(p.parse_args(["--model", str(tiny_model_dir[0]), "--device", "cpu",
                                             "--tensor-parallel-size", "0"]))
