"""A tensor-parallel worker of a replica dies (SIGKILL): the replica's requests end with an error naming the
dead worker (never a hang), the replica turns unhealthy and is restarted with new workers, serves the
pipeline's answers again, and terminate() leaves none of its processes behind. A worker that dies while
the engine idles fails its engine loop at once (so /health says 503 before any request is lost).

The worker is first stopped (SIGSTOP), so that rank 0 is surely blocked in an all-reduce, waiting for it,
when it is killed: no request can finish in between, and the kill always lands mid-step."""
import os
import signal
import threading
import time
import uuid

import httpx
import pytest

import fastgen_core as fg
from fastgen_core.server.client import ServerError, pid_alive
from fastgen_core.server.replica.engine_loop import EngineLoop
from fastgen_core.server.replica.metrics import ReplicaMetrics

UNHEALTHY_RESTART_S, HEALTH_TIMEOUT_S = 1.0, 0.5


def wait_until(cond, timeout, what, every=0.05):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(every)


def tp_workers(pid: int) -> list[int]:
    """The tensor-parallel workers of replica ``pid``: its children started by multiprocessing's spawn (not
    its resource tracker)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    spawned = b"spawn_main" in f.read()
            except (OSError, IndexError, ValueError):
                continue
            if parent == pid and spawned:
                out.append(int(d))
    return out


def test_a_killed_worker_fails_its_replicas_requests_and_the_replica_is_restarted(tiny_model_dir, pipe, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setenv("FASTGEN_CACHE", str(tmp_path / "cache"))
    prompts = ["The capital", "of France", "is a city on the Seine"]
    want = [o.token_ids for o in pipe(prompts, max_new_tokens=6, ignore_eos=True)]
    name = f"tpkill-{uuid.uuid4().hex[:6]}"
    client = fg.serve(str(tiny_model_dir[0]), deployment_name=name, port=0, device="cpu", cpu_threads=1,
                      kv_block_size=8, tensor_parallel_size=2, health_timeout_s=HEALTH_TIMEOUT_S,
                      unhealthy_restart_s=UNHEALTHY_RESTART_S)
    replica = client.deployment()["replicas"][0]["pid"]
    seen = [replica]                       # every replica and worker process this deployment had
    try:
        workers = tp_workers(replica)
        assert len(workers) == 1, f"a 2-rank replica has one worker process, found {workers}"
        worker = workers[0]
        seen.append(worker)
        stream = client.generate("a", stream=True, max_new_tokens=200, ignore_eos=True)
        next(stream)                       # generating: each step meets the worker in its all-reduces
        os.kill(worker, signal.SIGSTOP)    # rank 0 now waits in an all-reduce; nothing can finish
        answer = []
        post = threading.Thread(target=lambda: answer.append(httpx.post(
            client.url + "/generate", json={"prompts": "b", "max_new_tokens": 200, "ignore_eos": True}, timeout=60)))
        post.start()
        # its stats come from the replica's HTTP side, which answers while its engine waits
        wait_until(lambda: (client.stats()["replicas"][0]["stats"] or {}).get("outstanding") == 2, 30,
                   "the JSON request never reached the replica")
        os.kill(worker, signal.SIGKILL)
        dead = f"TensorParallelError: tensor-parallel worker rank 1 exited (pid {worker}, killed by signal SIGKILL)"

        with pytest.raises(ServerError) as failed:             # the stream ends with the in-band error event
            list(stream)
        assert failed.value.status == 503 and dead in failed.value.message, failed.value.message
        post.join(60)
        assert answer, "the JSON request hung after its replica's worker died"
        assert answer[0].status_code == 503 and dead in answer[0].json()["error"]["message"], answer[0].text

        # unhealthy (its engine loop died), ended and restarted with a new process and new workers
        wait_until(lambda: client.deployment()["replicas"][0]["pid"] != replica and client.health(), 60,
                   lambda: f"not restarted: {httpx.get(client.url + '/health').json()}", every=0.3)
        now = client.deployment()["replicas"][0]
        assert now["restarts"] == 1 and now["state"] == "up", now
        new_workers = tp_workers(now["pid"])
        assert len(new_workers) == 1, new_workers
        seen += [now["pid"], *new_workers]
        assert not any(pid_alive(p) for p in [replica, worker]), "the old replica or its worker still runs"
        said = (tmp_path / "cache" / "deployments" / f"{name}.log").read_text()
        assert f"replica 0 (cpu, pid {replica}) has been unhealthy for" in said and dead in said, said[-3000:]

        got = [client.generate(p, max_new_tokens=6, ignore_eos=True)[0].token_ids for p in prompts]
        assert got == want
    finally:
        client.terminate()
    # the replica stops its workers before it exits, so they are gone once terminate() returns
    assert [p for p in seen if pid_alive(p)] == [], "processes outlived terminate()"


def test_a_worker_that_dies_while_the_engine_idles_makes_the_loop_unhealthy_at_once(tiny_model_dir):
    """No request has to be lost first to find out: /health says 503, naming the worker, so the front door
    restarts the replica."""
    pipe = fg.pipeline(str(tiny_model_dir[0]), device="cpu", kv_block_size=8, tensor_parallel_size=2)
    loop = EngineLoop(pipe.engine, ReplicaMetrics(0, lambda: loop.snapshot), stall_timeout_s=60)
    loop.start()
    try:
        assert loop.health() == (True, "ok")
        worker = pipe.engine.workers.procs[0].pid
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: not loop.health()[0], 10, "the loop did not notice its dead worker")
        assert loop.health() == (False, "engine loop died: TensorParallelError: tensor-parallel worker rank 1 "
                                         f"exited (pid {worker}, killed by signal SIGKILL)")
    finally:
        loop.stop()
        pipe.destroy()
