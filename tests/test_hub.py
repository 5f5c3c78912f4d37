"""Hugging Face Hub ids (``org/name``) as models: ``fastgen generate --model org/name``, ``fg.pipeline("org/name")``
and ``fastgen serve`` resolve them through huggingface_hub's cache (offline too), and an id that is neither cached
nor reachable is an error naming it. The cache is laid out as huggingface_hub lays it (blobs, refs/main, snapshots
of symlinks) in a temporary HF_HOME; the Hub itself is never contacted (offline mode, or an endpoint on loopback
that refuses connections)."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = "fastgen-tests/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
UNREACHABLE = "http://127.0.0.1:9"        # the discard port: connection refused, no traffic leaves the machine


def lay_out_cache(hub: Path, repo_id: str, model_dir: Path, files=None) -> Path:
    """huggingface_hub's cache layout for ``repo_id`` at COMMIT holding ``model_dir``'s files: each file's content
    in blobs/<etag> (sha256 for LFS weights, the git blob sha1 for the rest), snapshots/<commit>/<file> a relative
    symlink to it, refs/main naming the commit."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for f in sorted(model_dir.iterdir()):
        if files is not None and f.name not in files:
            continue
        data = f.read_bytes()
        etag = hashlib.sha256(data).hexdigest() if f.suffix == ".safetensors" else \
            hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (repo / "blobs" / etag).write_bytes(data)
        (snapshot / f.name).symlink_to(Path("..", "..", "blobs", etag))
    return snapshot


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("hf-home")
    snapshot = lay_out_cache(home / "hub", REPO, tiny_model_dir[0])
    lay_out_cache(home / "hub", "fastgen-tests/config-only", tiny_model_dir[0], files={"config.json"})
    return home, snapshot


def run(code_or_cli, home, offline=True, **env):
    """A fresh process (huggingface_hub reads HF_HOME / HF_HUB_OFFLINE when imported) with the test's cache."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    e.update(HF_HOME=str(home), HF_HUB_OFFLINE="1" if offline else "0", HF_ENDPOINT=UNREACHABLE,
             HF_HUB_DISABLE_TELEMETRY="1", **env)
    cmd = [sys.executable, "-m", "fastgen_core.cli", *code_or_cli] if isinstance(code_or_cli, list) else \
        [sys.executable, "-c", code_or_cli]
    return subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE=1", "online-hub-unreachable"])
def test_generate_with_a_hub_id_runs_the_cached_snapshot(hf_home, pipe, offline):
    home, _ = hf_home
    r = run(["generate", "--model", REPO, "--device", "cpu", "--max-new-tokens", "8", "--ignore-eos", "Hello"], home,
            offline=offline)
    assert r.returncode == 0, r.stderr
    assert r.stdout == pipe("Hello", max_new_tokens=8, ignore_eos=True)[0].generated_text + "\n"


def test_pipeline_and_serve_settings_take_a_hub_id(hf_home):
    home, snapshot = hf_home
    r = run(f"""
import json, fastgen_core as fg
from fastgen_core.server.frontdoor.settings import ServeSettings
p = fg.pipeline({REPO!r}, device="cpu")
s = ServeSettings(model={REPO!r}, device="cpu")
print(json.dumps([p.engine.config.model, s.model, s.deployment_name]))
""", home)
    assert r.returncode == 0, r.stderr
    model, served, name = json.loads(r.stdout.strip().splitlines()[-1])
    assert Path(model).resolve() == Path(served) == snapshot.resolve()
    assert name == "tiny-llama"            # the id's name, not the snapshot's commit hash


def test_an_id_not_in_the_cache_offline_is_an_error_naming_it(hf_home):
    home, _ = hf_home
    r = run(["generate", "--model", "fastgen-tests/not-cached", "Hello"], home)
    assert r.returncode == 2
    assert "'fastgen-tests/not-cached' is neither a local directory nor a model in the Hugging Face cache" in r.stderr
    assert "HF_HUB_OFFLINE" in r.stderr and str(home / "hub") in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("repo,words", [
    ("fastgen-tests/not-cached", "is neither a local directory nor a model in the Hugging Face cache, and downloading "
                                 "it failed"),
    ("fastgen-tests/config-only", "lacks config.json or weights (*.safetensors, *.bin), and the Hub did not provide "
                                  "them"),
])
def test_an_id_the_hub_cannot_give_is_an_error_naming_it(hf_home, repo, words):
    """Online, an id missing from the cache (or cached without weights) is downloaded; with the Hub unreachable
    that fails, and the error names the id and why."""
    home, _ = hf_home
    r = run(["generate", "--model", repo, "Hello"], home, offline=False)
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: {repo!r}") and words in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
