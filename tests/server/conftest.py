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


@pytest.fixture(scope="session")
def cli_server(tiny_model_dir, tmp_path_factory):
    """``fastgen serve`` as a user starts it (one replica, an API key, any free port). Its records live in a
    temporary FASTGEN_CACHE, given to the server's environment only (tests that look it up by name set it)."""
    cache = tmp_path_factory.mktemp("fastgen-cache")
    name = f"cli-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "fastgen_core.cli", "serve", "--model", str(tiny_model_dir[0]), "--port", "0",
           "--deployment-name", name, "--api-key", API_KEY, "--device", "cpu", "--cpu-threads", "1",
           "--kv-block-size", "8"]
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
