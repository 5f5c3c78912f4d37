"""Start-up refusals say what is wrong, before or instead of a half-started deployment."""
import json
import shutil

import pytest

import fastgen_core as fg
from fastgen_core.server.frontdoor.placement import plan_devices


def test_serve_reports_a_model_no_plugin_supports(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTGEN_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "nope"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["NopeForCausalLM"], "model_type": "nope"}))
    with pytest.raises(fg.FastgenError, match="NopeForCausalLM"):
        fg.serve(str(model), port=0, device="cpu", startup_timeout_s=120)
    assert not list((tmp_path / "cache" / "deployments").glob("*.json"))       # nothing left registered


@pytest.mark.parametrize("kwargs,words", [
    (dict(port=70000), "port"),
    (dict(deployment_name="has space"), "deployment_name"),
    (dict(replicas=0), "replicas"),
    (dict(queue_limit=-1), "queue_limit"),
    (dict(device="tpu"), "device"),
    (dict(max_restarts=-1), "max_restarts must be an integer >= 0"),
    (dict(max_restarts=1.5), "max_restarts"),
    (dict(max_restarts=True), "max_restarts"),
    (dict(restart_window_s=0), "restart_window_s must be a positive number of seconds"),
    (dict(restart_window_s="60"), "restart_window_s"),
    (dict(unhealthy_restart_s=-1), r"unhealthy_restart_s must be a number of seconds >= 0 .*0: never"),
    (dict(unhealthy_restart_s=float("nan")), "unhealthy_restart_s"),
    (dict(unhealthy_restart_s="60"), "unhealthy_restart_s"),
    (dict(unhealthy_restart_s=True), "unhealthy_restart_s"),
    (dict(max_ragged_batch_size=0), "max_ragged_batch_size"),
])
def test_bad_settings_are_refused_before_anything_starts(tiny_model_dir, kwargs, words):
    with pytest.raises(fg.FastgenError, match=words):
        fg.serve(str(tiny_model_dir[0]), **kwargs)


def test_missing_model_directory_and_unknown_deployment(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTGEN_CACHE", str(tmp_path))
    with pytest.raises(fg.FastgenError, match="config.json"):
        fg.serve(str(tmp_path / "missing"))
    with pytest.raises(fg.FastgenError, match="no running deployment named 'ghost'"):
        fg.client("ghost")


def test_device_plan():
    assert plan_devices("cpu", None, 3) == ["cpu"] * 3
    assert plan_devices(None, "cuda:0,cuda:1", None) == ["cuda:0", "cuda:1"]
    assert plan_devices(None, '["cuda:1"]', 2) == ["cuda:1", "cuda:1"]
    with pytest.raises(fg.FastgenError, match="one device per replica"):
        plan_devices(None, "cuda:0,cuda:1", 3)


def test_a_replica_that_dies_while_starting_is_named_with_its_own_error(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTGEN_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir[0], model)
    [weights] = model.glob("*.safetensors")
    weights.write_bytes(b"not a safetensors file")           # the front door reads no weights: the replica fails
    with pytest.raises(fg.FastgenError) as e:
        fg.serve(str(model), port=0, device="cpu", cpu_threads=1, startup_timeout_s=120)
    message = str(e.value).splitlines()[0]
    assert "while starting: replica 0 (cpu) exited while starting (exit code 1: " in message, message
    assert weights.name in message or "safetensors" in message.lower(), message
