"""The HTTP API of a `fastgen serve` process, as OpenAI, curl, MII and fastgen clients see it."""
import json
import subprocess

import httpx
import openai
import pytest

import fastgen_core as fg


def chat_ids(tok, text):
    ids = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=True, add_generation_prompt=True,
                                  return_dict=False)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_openai_client_gets_the_pipeline_text(cli_server, pipe):
    oa = openai.OpenAI(base_url=cli_server["url"] + "/v1", api_key=cli_server["key"])
    want = pipe("Hello there", max_new_tokens=12)[0]
    got = oa.completions.create(model=cli_server["name"], prompt="Hello there", max_tokens=12, temperature=0)
    assert got.choices[0].text == want.generated_text
    assert got.choices[0].finish_reason == want.finish_reason
    assert got.usage.prompt_tokens == want.prompt_length and got.usage.completion_tokens == want.generated_length
    pieces = [c.choices[0].text for c in oa.completions.create(model=cli_server["name"], prompt="Hello there",
                                                                max_tokens=12, temperature=0, stream=True)]
    assert "".join(pieces) == want.generated_text and len(pieces) > 1

    chat_want = pipe(chat_ids(pipe.tokenizer, "Hi!"), max_new_tokens=10)[0].generated_text
    msgs = [{"role": "user", "content": "Hi!"}]
    chat = oa.chat.completions.create(model=cli_server["name"], messages=msgs, max_tokens=10, temperature=0)
    assert chat.choices[0].message.content == chat_want and chat.choices[0].message.role == "assistant"
    stream = oa.chat.completions.create(model=cli_server["name"], messages=msgs, max_tokens=10, temperature=0,
                                        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat_want
    assert chunks[-1].usage.completion_tokens == pipe(chat_ids(pipe.tokenizer, "Hi!"), max_new_tokens=10)[0].generated_length
    assert [m.id for m in oa.models.list().data] == [cli_server["name"]]


def test_curl_streamed_and_not(cli_server, pipe):
    want = pipe("curl me", max_new_tokens=8, ignore_eos=True)[0].generated_text
    base = ["curl", "-sS", "-N", "-H", f"Authorization: Bearer {cli_server['key']}"]     # no Content-Type: curl -d
    body = {"prompt": "curl me", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    out = subprocess.run(base + ["-d", json.dumps(body), cli_server["url"] + "/v1/completions"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert json.loads(out)["choices"][0]["text"] == want
    out = subprocess.run(base + ["-d", json.dumps({**body, "stream": True}), cli_server["url"] + "/v1/completions"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    events = [line[6:] for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == want
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_token_id_and_batched_prompts(cli_server, pipe):
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    want = pipe(prompts, max_new_tokens=6, ignore_eos=True)
    r = cli_server["http"].post("/v1/completions", json={"prompt": prompts, "max_tokens": 6, "temperature": 0,
                                                         "ignore_eos": True})
    assert r.status_code == 200, r.text
    assert [c["text"] for c in r.json()["choices"]] == [w.generated_text for w in want]
    assert [c["index"] for c in r.json()["choices"]] == [0, 1]


def test_stop_seed_min_tokens_options(cli_server, pipe):
    http = cli_server["http"]
    full = pipe("Tell me", max_new_tokens=20, ignore_eos=True)[0].generated_text
    stop = full[6:8]
    r = http.post("/v1/completions", json={"prompt": "Tell me", "max_tokens": 20, "temperature": 0,
                                           "ignore_eos": True, "stop": stop}).json()["choices"][0]
    assert r["text"] == full[:full.find(stop)] and r["finish_reason"] == "stop"
    body = {"prompt": "Seeded", "max_tokens": 10, "temperature": 1.0, "top_k": 20, "seed": 7, "min_tokens": 10}
    a, b = (http.post("/v1/completions", json=body).json()["choices"][0] for _ in range(2))
    assert a == b and a["finish_reason"] == "length"


def test_mii_endpoint_matches_mii_shape(cli_server, pipe):
    http = cli_server["http"]
    want = pipe(["Hello", "Bye"], max_new_tokens=5, ignore_eos=True)
    r = http.post(f"/mii/{cli_server['name']}", json={"prompts": ["Hello", "Bye"], "max_new_tokens": 5,
                                                      "do_sample": False, "ignore_eos": True})
    assert r.status_code == 200, r.text
    assert r.json() == [{"generated_text": w.generated_text, "prompt_length": w.prompt_length,
                         "generated_length": 5, "finish_reason": "length"} for w in want]
    sampled = http.post(f"/mii/{cli_server['name']}", json={"prompts": "Hello", "max_length": 9}).json()
    assert sampled[0]["prompt_length"] + sampled[0]["generated_length"] <= 9
    assert http.post("/mii/other-name", json={"prompts": "x"}).status_code == 404


def test_python_client_returns_pipeline_responses(cli_server, pipe, monkeypatch):
    monkeypatch.setenv("FASTGEN_CACHE", cli_server["cache"])
    client = fg.client(cli_server["name"], api_key=cli_server["key"])          # found by deployment name
    want = pipe(["one", [20, 21, 22]], max_new_tokens=7, ignore_eos=True)
    got = client.generate(["one", [20, 21, 22]], max_new_tokens=7, ignore_eos=True)
    assert all(isinstance(g, fg.Response) for g in got)
    assert [(g.generated_text, g.token_ids, g.finish_reason) for g in got] == \
        [(w.generated_text, w.token_ids, w.finish_reason) for w in want]
    pieces = list(client.generate("one", max_new_tokens=7, ignore_eos=True, stream=True))
    assert "".join(pieces) == want[0].generated_text
    with pytest.raises(fg.InvalidRequestError, match="top_p"):
        client.generate("one", top_p=1.5)
    by_url = fg.client(cli_server["url"], api_key=cli_server["key"])
    assert by_url.generate("one", max_new_tokens=7, ignore_eos=True)[0].token_ids == want[0].token_ids
    assert client.health()


LONG = "x" * 300          # longer than the tiny model's 256-token context
BAD = [
    ("/v1/completions", b'{"prompt": "x", "max_tokens": ', 400, "not valid JSON"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "ten"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": 5}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -3}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 10 ** 12}, 400, "context"),
    ("/v1/completions", {"prompt": "x", "temperature": -0.5}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ("/v1/completions", {"prompt": LONG}, 400, "context"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4o"}, 404, "gpt-4o"),
    ("/v1/completions", {"prompt": "x", "n": 0}, 400, "n: Input should be greater than or equal to 1"),
    ("/v1/completions", {"prompt": "x", "n": 2, "best_of": 3}, 400, "best_of equal to n (2)"),
    ("/v1/completions", {"prompt": "x", "presence_penalty": 2.5}, 400, "presence_penalty"),
    ("/v1/completions", {"prompt": "x", "repetition_penalty": 0}, 400, "repetition_penalty"),
    ("/v1/completions", {"prompt": "x", "echo": True, "logprobs": 1, "stream": True}, 400, "without stream"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400,
     "top_logprobs needs logprobs"),
    ("/v1/completions", {"prompt": "x", "temprature": 0}, 400, "temprature"),
    ("/v1/completions", {"prompt": [[5, 6], [999]]}, 400, "prompt 1"),
    ("/v1/completions", {"prompt": ""}, 400, "empty"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 4, "min_tokens": 9}, 400, "min_new_tokens"),
    ("/v1/completions", {"prompt": "x", "logprobs": 21}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "x", "seed": 2 ** 70}, 400, "seed"),
    ("/v1/completions", {"prompt": "x", "stop": [""]}, 400, "stop"),
    ("/v1/completions", [1, 2], 400, "body"),
    ("/v1/completions", {}, 400, "prompt: field required"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ("/generate", {"prompts": "x", "return_logits": True}, 400, "return_logits"),
    ("/generate", {"prompts": ["a", "b"], "stream": True}, 400, "one prompt"),
    ("/v1/nothing", {}, 404, "no route"),
]


@pytest.mark.parametrize("path,body,status,words", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_gets_a_4xx_json_error_and_the_server_keeps_serving(cli_server, path, body, status, words):
    http = cli_server["http"]
    kw = {"content": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) else \
        {"json": body}
    r = http.post(path, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err["message"] and err["code"] == status
    ok = http.post("/v1/completions", json={"prompt": "still fine", "max_tokens": 3, "temperature": 0})
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] in ("length", "stop")


def test_api_key_is_required(cli_server):
    url = cli_server["url"] + "/v1/completions"
    missing = httpx.post(url, json={"prompt": "x"})
    wrong = httpx.post(url, json={"prompt": "x"}, headers={"Authorization": "Bearer nope"})
    assert missing.status_code == wrong.status_code == 401
    assert "missing API key" in missing.json()["error"]["message"]
    assert "wrong API key" in wrong.json()["error"]["message"]
    assert httpx.get(cli_server["url"] + "/health").status_code == 200       # health stays public


def test_openapi_schema_is_published(cli_server):
    schema = httpx.get(cli_server["url"] + "/openapi.json").json()
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/models", "/mii/{deployment_name}", "/generate",
                 "/health", "/metrics"):
        assert path in schema["paths"], path
    props = schema["components"]["schemas"]["CompletionRequest"]["properties"]
    assert {"prompt", "max_tokens", "temperature", "top_p", "ignore_eos", "top_k", "min_tokens", "seed",
            "stop"} <= set(props)
