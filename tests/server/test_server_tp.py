"""A deployment whose replica is a tensor-parallel engine (2 CPU ranks): same answers as the in-process
pipeline, and terminate() leaves no worker process behind."""
import os
import time
import uuid

import fastgen_core as fg
from fastgen_core.server.client import pid_alive


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
