"""``fastgen serve`` as a user runs it: Ctrl-C (SIGINT) to the front door stops the deployment cleanly, without a
traceback; without the server extra it names the command that installs it."""
import os
import signal
import subprocess
import sys
import time

from .conftest import wait_for_record


def test_sigint_to_the_front_door_stops_the_deployment_without_a_traceback(tiny_model_dir, tmp_path):
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "fastgen_core.cli", "serve", "--model", str(tiny_model_dir[0]), "--port", "0",
           "--deployment-name", "sigint", "--device", "cpu", "--cpu-threads", "1"]
    # Ctrl-C's SIGINT as at a terminal: a process started in the background (nohup, `cmd &`) inherits it ignored
    proc = subprocess.Popen(cmd, env={**os.environ, "FASTGEN_CACHE": str(cache)}, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        record = wait_for_record(cache, "sigint", proc)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1] == "fastgen serve: interrupted", err
    assert not (cache / "deployments" / "sigint.json").exists()           # the record is removed
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in record["replica_pids"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in record["replica_pids"])    # and the replicas stopped


def test_serve_without_the_server_extra_names_the_install_command(tiny_model_dir):
    """prometheus_client made unimportable, as where the extra was never installed."""
    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "from fastgen_core.cli import main\n"
            f"sys.exit(main(['serve', '--model', {str(tiny_model_dir[0])!r}, '--device', 'cpu']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr == ("error: serving needs the server extra, and prometheus-client is not installed: "
                        "pip install -e '.[server]' (in the fastgen repository)\n")


def test_the_python_client_warns_once_when_sampling_options_lack_do_sample(cli_server, pipe, monkeypatch):
    import warnings

    import pytest

    import fastgen_core as fg
    from fastgen_core import sampling
    monkeypatch.setattr(sampling, "_warned_unused", set())        # as in a fresh process
    client = fg.client(cli_server["url"], api_key=cli_server["key"])
    greedy = pipe("Hi", max_new_tokens=6, ignore_eos=True)[0].token_ids
    with pytest.warns(UserWarning, match=r"top_k=5, seed=7 only act when sampling, but do_sample is False"):
        got = client.generate("Hi", max_new_tokens=6, ignore_eos=True, top_k=5, seed=7)[0].token_ids
    assert got == greedy
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client.generate("Hi", max_new_tokens=2, top_k=5, seed=7)
