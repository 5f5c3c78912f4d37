"""Engine options are validated once into an EngineConfig and reach every replica as that config (its own device
set on a copy), in a file; ``fastgen_core.serve()`` hands its settings to the front door on stdin. No process's
argv carries options, JSON or the API key."""
import json
import re
import time
import uuid
from dataclasses import fields, replace

import torch

import fastgen_core as fg
from fastgen_core.config import EngineConfig
from fastgen_core.server.frontdoor.launcher import module_command
from fastgen_core.server.frontdoor.settings import ServeSettings

KEY = "options-once-key-123"


def argv_of(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0")[:-1]]


def logged_configs(log_path, replicas: int, timeout: float = 30.0) -> dict[int, dict]:
    """The engine config each replica says (log level info) it built, by replica index."""
    deadline = time.monotonic() + timeout
    while True:
        found = {int(i): json.loads(c) for i, c in
                 re.findall(r"^\[replica (\d+)\] INFO engine config: (.*)$", log_path.read_text(), re.M)}
        if len(found) == replicas or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_each_replica_runs_the_front_doors_validated_config_and_no_argv_carries_options(tiny_model_dir, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.setenv("FASTGEN_CACHE", str(tmp_path / "cache"))
    model = str(tiny_model_dir[0])
    options = dict(kv_block_size=8, num_kv_blocks=96, max_ragged_batch_size=64, dtype=torch.bfloat16, seed=3,
                   kernels="reference")
    name = f"once-{uuid.uuid4().hex[:6]}"
    # what serve() validates: the front door takes it as it is
    validated = ServeSettings(model=model, device="cpu", engine_options=options).engine
    client = fg.serve(model, deployment_name=name, port=0, device="cpu", cpu_threads=1, replicas=2, api_key=KEY,
                      log_level="info", **options)
    try:
        info = client.deployment()
        front_door = argv_of(info["pid"])
        assert front_door == module_command("fastgen_core.server.cli"), front_door      # no settings flags
        replicas = info["replicas"]
        assert len(replicas) == 2
        said = logged_configs(tmp_path / "cache" / "deployments" / f"{name}.log", len(replicas))
        for r in replicas:
            argv = argv_of(r["pid"])
            assert not {"--engine-options", "--model", "--device"} & set(argv), argv
            assert not any(a.lstrip().startswith("{") for a in argv), argv             # no JSON at all
            want = replace(validated, device=r["device"])
            with open(argv[argv.index("--config") + 1]) as f:
                handed = json.load(f)
            assert handed == want.to_dict()
            assert handed["dtype"] == "torch.bfloat16" and handed["kernels"] == "reference"
            built = EngineConfig.from_dict(said[r["replica"]])          # what the replica process built
            for f in fields(EngineConfig):
                assert getattr(built, f.name) == getattr(want, f.name), f.name
        for argv in [front_door] + [argv_of(r["pid"]) for r in replicas]:
            assert not any(KEY in a for a in argv), argv
        out = client.generate("hello", max_new_tokens=4, ignore_eos=True)         # it serves, with the key
        assert out[0].generated_length == 4
    finally:
        client.terminate()
