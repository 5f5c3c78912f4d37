"""MII's max_length on a replica's app, in this process (so the test can watch the real tokenizer): the
prompt is tokenized once, and the answer is the pipeline's greedy text for max_length - prompt tokens."""
import asyncio

import httpx
import pytest

import fastgen_core as fg
from fastgen_core.server.app import create_app
from fastgen_core.server.replica.engine_loop import EngineLoop
from fastgen_core.server.replica.local import LocalBackend, ModelInfo
from fastgen_core.server.replica.metrics import ReplicaMetrics

NAME = "inproc"


@pytest.fixture(scope="module")
def replica_app(tiny_model_dir):
    """What a replica process serves (LocalBackend + engine loop thread), without the process."""
    path = str(tiny_model_dir[0])
    engine = fg.pipeline(path, device="cpu", kv_block_size=8).engine
    holder = {}
    metrics = ReplicaMetrics(0, lambda: holder["loop"].snapshot)
    loop = holder["loop"] = EngineLoop(engine, metrics, stall_timeout_s=60)
    backend = LocalBackend(loop, ModelInfo(NAME, path, engine.max_context, 0), metrics, queue_limit=16)
    loop.start()
    try:
        yield create_app(backend, NAME, path), engine
    finally:
        loop.stop()


class CountingTokenizer:
    """Counts encodings of the given texts by the real tokenizer of one engine (its class is swapped for a
    subclass whose __call__ and encode count, then call the real ones)."""

    def __init__(self, tok, texts):
        self.tok, self.texts, self.calls = tok, set(texts), []
        counting = self

        class Counting(type(tok)):
            def __call__(self, text=None, *args, **kwargs):
                counting._seen(text)
                return super().__call__(text, *args, **kwargs)

            def encode(self, text, *args, **kwargs):
                counting._seen(text)
                return super().encode(text, *args, **kwargs)
        self.original = type(tok)
        tok.__class__ = Counting

    def _seen(self, text):
        if isinstance(text, str) and text in self.texts:
            self.calls.append(text)

    def restore(self):
        self.tok.__class__ = self.original


async def _post(app, body):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica",
                                 timeout=60) as http:
        return await http.post(f"/mii/{NAME}", json=body)


@pytest.mark.parametrize("return_full_text", [False, True])
def test_mii_max_length_tokenizes_each_prompt_once(replica_app, pipe, return_full_text):
    app, engine = replica_app
    prompts, max_length = ["Hello", "A longer prompt here"], 30
    lengths = [len(pipe.tokenizer(p).input_ids) for p in prompts]
    want = [pipe(p, max_new_tokens=max_length - n, ignore_eos=True, return_full_text=return_full_text)[0]
            for p, n in zip(prompts, lengths)]
    counter = CountingTokenizer(engine.tokenizer, prompts)
    try:
        r = asyncio.run(_post(app, {"prompts": prompts, "max_length": max_length, "do_sample": False,
                                    "ignore_eos": True, "return_full_text": return_full_text}))
    finally:
        counter.restore()
    assert r.status_code == 200, r.text
    assert r.json() == [{"generated_text": w.generated_text, "prompt_length": n, "generated_length": max_length - n,
                         "finish_reason": "length"} for w, n in zip(want, lengths)]
    if return_full_text:
        assert all(g["generated_text"].startswith(p) for g, p in zip(r.json(), prompts))
    assert sorted(counter.calls) == sorted(prompts), counter.calls        # once per prompt, not twice


def test_mii_max_length_refusals_name_the_prompt(replica_app):
    app, _ = replica_app
    r = asyncio.run(_post(app, {"prompts": ["ok", "this prompt is too long"], "max_length": 5}))
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    assert "prompt 1" in msg and "max_length (5)" in msg, msg
    r = asyncio.run(_post(app, {"prompts": "fine", "max_length": 10, "do_sample": False}))
    assert r.status_code == 200 and r.json()[0]["prompt_length"] + r.json()[0]["generated_length"] <= 10
