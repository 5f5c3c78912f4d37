"""Real deployments on 127.0.0.1 over the tiny Llama of tests/conftest.py (character-level tokenizer)."""
import json
import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest

API_KEY = "test-key-123"


def wait_for_record(cache, name, proc, timeout=180):
    path = cache / "deployments" / f"{name}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file():
            return json.loads(path.read_text())
        assert proc.poll() is None, f"fastgen serve exited with {proc.returncode}"
        time.sleep(0.1)
    raise AssertionError(f"no deployment record after {timeout}s")


def serve(model_dir, cache, *extra):
    """``fastgen serve`` as a user starts it (one replica, an API key, any free port) over ``model_dir``; its
    records live in the temporary FASTGEN_CACHE ``cache``, given to the server's environment only."""
    name = f"cli-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "fastgen_core.cli", "serve", "--model", str(model_dir), "--port", "0",
           "--deployment-name", name, "--api-key", API_KEY, "--device", "cpu", "--cpu-threads", "1",
           "--kv-block-size", "8", *extra]
    proc = subprocess.Popen(cmd, env={**os.environ, "FASTGEN_CACHE": str(cache)})
    try:
        rec = wait_for_record(cache, name, proc)
        http = httpx.Client(base_url=rec["url"], headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
        yield {"url": rec["url"], "name": name, "proc": proc, "http": http, "record": rec,
               "key": API_KEY, "cache": str(cache)}
        http.close()
    finally:
        proc.terminate()
        proc.wait(60)


@pytest.fixture(scope="session")
def cli_server(tiny_model_dir, tmp_path_factory):
    """A deployment of the tiny Llama of tests/conftest.py (tests that look it up by name set FASTGEN_CACHE)."""
    yield from serve(tiny_model_dir[0], tmp_path_factory.mktemp("fastgen-cache"))


@pytest.fixture(scope="module")
def long_server(tiny_long_model_dir, tmp_path_factory):
    """A deployment of the tiny Llama with a 4096-token context."""
    yield from serve(tiny_long_model_dir, tmp_path_factory.mktemp("fastgen-cache-4k"))


@pytest.fixture(scope="module")
def logged_long_server(tiny_long_model_dir, tmp_path_factory):
    """long_server's deployment with what its processes (front door and replica) write to stderr kept in a
    file ("log"), for tests of what the server logs."""
    cache = tmp_path_factory.mktemp("fastgen-cache-logged")
    log_path = cache / "server.log"
    name = f"cli-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "fastgen_core.cli", "serve", "--model", str(tiny_long_model_dir), "--port", "0",
           "--deployment-name", name, "--api-key", API_KEY, "--device", "cpu", "--cpu-threads", "1",
           "--kv-block-size", "8"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env={**os.environ, "FASTGEN_CACHE": str(cache)}, stderr=log)
    try:
        rec = wait_for_record(cache, name, proc)
        http = httpx.Client(base_url=rec["url"], headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
        yield {"url": rec["url"], "name": name, "proc": proc, "http": http, "key": API_KEY, "log": log_path}
        http.close()
    finally:
        proc.terminate()
        proc.wait(60)
