"""A replica's app in this process with prefix caching on: a repeated prompt is served from cached blocks,
with the same answer, and /metrics counts the cached tokens."""
import asyncio

import httpx

import fastgen_core as fg
from fastgen_core.server.app import create_app
from fastgen_core.server.replica.engine_loop import EngineLoop
from fastgen_core.server.replica.local import LocalBackend, ModelInfo
from fastgen_core.server.replica.metrics import ReplicaMetrics

NAME = "prefix"


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_repeated_prompt_hits_the_prefix_cache_and_is_counted(tiny_model_dir):
    path = str(tiny_model_dir[0])
    engine = fg.pipeline(path, device="cpu", kv_block_size=8, enable_prefix_caching=True).engine
    holder = {}
    metrics = ReplicaMetrics(0, lambda: holder["loop"].snapshot)
    loop = holder["loop"] = EngineLoop(engine, metrics, stall_timeout_s=60)
    app = create_app(LocalBackend(loop, ModelInfo(NAME, path, engine.max_context, 0), metrics, queue_limit=16),
                     NAME, path)
    loop.start()
    prompt = "You are a helpful assistant. Answer briefly. " * 2

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r", timeout=60) as h:
            body = {"prompt": prompt, "max_tokens": 6, "temperature": 0, "ignore_eos": True}
            a = (await h.post("/v1/completions", json=body)).json()["choices"][0]["text"]
            b = (await h.post("/v1/completions", json=body)).json()["choices"][0]["text"]
            await asyncio.sleep(0.2)                      # the loop publishes its stats after the step
            return a, b, (await h.get("/metrics")).text
    try:
        a, b, text = asyncio.run(go())
    finally:
        loop.stop()
    assert a == b
    cached = (len(prompt) - 1) // 8 * 8                   # character tokenizer: whole blocks, one token left
    assert _metric(text, "fastgen_prefix_cache_hit_tokens_total") >= cached > 0
    assert _metric(text, "fastgen_prefix_cache_blocks") > 0
    assert "fastgen_cuda_graph_steps_total" in text
