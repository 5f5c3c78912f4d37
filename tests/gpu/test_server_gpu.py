"""The server's CUDA replica path: two replica processes on the GPU (device_map), each an engine with CUDA
graphs, behind one front door; greedy answers over HTTP equal the in-process CUDA pipeline's, both engines
serve, and terminate() stops every process."""
import uuid

import httpx
import pytest
import torch

import fastgen_core as fg
from fastgen_core.server.client import pid_alive
from fastgen_core.testing import make_tiny_tokenizer, save_tiny_model

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
# the server extras (fastapi, uvicorn): the lent GPU machines have no package index, so they travel as wheels
pytest.importorskip("fastapi", reason="the server extras are not installed (pip install -e '.[server]')")
pytest.importorskip("uvicorn", reason="the server extras are not installed (pip install -e '.[server]')")


def test_two_cuda_replicas_serve_the_pipelines_answers(tmp_path, monkeypatch):
    from transformers import LlamaConfig
    cfg = LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, eos_token_id=2)
    model_dir = tmp_path / "m"
    save_tiny_model(cfg, model_dir, tokenizer=make_tiny_tokenizer(128), init_std=0.1)
    opts = dict(dtype="float32", kv_block_size=16, num_kv_blocks=256)
    prompts = ["The capital", "of France", "is a city", "on the Seine"]
    pipe = fg.pipeline(str(model_dir), device="cuda", **opts)
    want = [o.generated_text for o in pipe(prompts, max_new_tokens=12, ignore_eos=True)]
    pipe.destroy()
    monkeypatch.setenv("FASTGEN_CACHE", str(tmp_path / "cache"))
    client = fg.serve(str(model_dir), deployment_name=f"gpu-{uuid.uuid4().hex[:6]}", port=0,
                      device_map="cuda:0,cuda:0", **opts)
    try:
        info = client.deployment()
        assert [r["device"] for r in info["replicas"]] == ["cuda:0", "cuda:0"]
        got = [client.generate(p, max_new_tokens=12, ignore_eos=True)[0].generated_text for p in prompts]
        assert got == want
        r = httpx.post(client.url + "/v1/completions", json={"prompt": prompts[0], "max_tokens": 12,
                                                              "temperature": 0, "ignore_eos": True}, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == want[0], r.text
        stats = client.stats()["replicas"]
        assert all(s["stats"]["engine"]["finished"] >= 1 for s in stats), stats
        assert all(s["stats"]["engine"]["graph_steps"] >= 1 for s in stats), stats
        pids = [r["pid"] for r in info["replicas"]]
    finally:
        client.terminate(timeout=120)
    assert not any(pid_alive(p) for p in pids)
