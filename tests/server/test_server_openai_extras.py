"""OpenAI options beyond the basics, through the official client against `fastgen serve`, checked against the
in-process pipeline: logprobs (completions and chat, streamed or not), echo with prompt logprobs (how
evaluation harnesses score text), n choices, penalties, and usage counting each prompt once."""
import openai
import pytest

PROMPTS = ["The capital of", "Once upon a time"]


M = None


@pytest.fixture(scope="module")
def oa(cli_server):
    global M
    M = cli_server["name"]                     # the served model id is the deployment name
    return openai.OpenAI(base_url=cli_server["url"] + "/v1", api_key=cli_server["key"])


def test_completion_logprobs_equal_the_pipelines(oa, pipe):
    r = oa.completions.create(model=M, prompt=PROMPTS, max_tokens=6, temperature=0, logprobs=2,
                              extra_body={"ignore_eos": True})
    want = pipe(PROMPTS, max_new_tokens=6, ignore_eos=True, logprobs=2)
    tok = pipe.tokenizer
    for choice, w in zip(r.choices, want):
        lp = choice.logprobs
        assert lp.tokens == [tok.decode([t]) for t in w.token_ids]
        assert lp.token_logprobs == pytest.approx([t.logprob for t in w.logprobs], abs=1e-4)
        for top, t in zip(lp.top_logprobs, w.logprobs):
            # the 2 alternatives plus the chosen token (greedy: it is the first alternative)
            assert set(top) == {tok.decode([i]) for i, _ in t.top} and len(top) == 2
        assert lp.text_offset == [sum(len(x) for x in lp.tokens[:i]) for i in range(len(lp.tokens))]
        assert "".join(lp.tokens) == choice.text


def test_echo_scores_the_prompt_like_the_pipeline(oa, pipe):
    # lm-eval-harness's loglikelihood request: echo, logprobs, one new token
    r = oa.completions.create(model=M, prompt=PROMPTS[0], max_tokens=1, temperature=0, logprobs=1, echo=True)
    want = pipe(PROMPTS[0], max_new_tokens=1, prompt_logprobs=1, logprobs=1)[0]
    c = r.choices[0]
    assert c.text == PROMPTS[0] + want.generated_text
    lp = c.logprobs
    n = want.prompt_length
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:n] == pytest.approx([t.logprob for t in want.prompt_logprobs[1:]], abs=1e-4)
    assert lp.token_logprobs[n:] == pytest.approx([t.logprob for t in want.logprobs], abs=1e-4)
    assert len(lp.tokens) == n + 1


def test_n_choices_are_seeded_copies_listed_prompt_by_prompt(oa, pipe):
    r = oa.completions.create(model=M, prompt=PROMPTS, max_tokens=5, temperature=1.0, seed=11, n=3,
                              extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == list(range(6))
    for i, p in enumerate(PROMPTS):
        for j in range(3):
            want = pipe(p, max_new_tokens=5, do_sample=True, temperature=1.0, seed=11 + j, ignore_eos=True)[0]
            assert r.choices[i * 3 + j].text == want.generated_text
    assert len({c.text for c in r.choices[:3]}) > 1            # different seeds, different samples
    plen = sum(pipe.engine.validate_prompt(p)[0].__len__() for p in PROMPTS)
    assert r.usage.prompt_tokens == plen and r.usage.completion_tokens == 30


def test_penalties_pass_through(oa, pipe):
    r = oa.completions.create(model=M, prompt=PROMPTS[1], max_tokens=8, temperature=0, frequency_penalty=1.2,
                              presence_penalty=0.4, extra_body={"ignore_eos": True, "repetition_penalty": 1.3})
    want = pipe(PROMPTS[1], max_new_tokens=8, ignore_eos=True, frequency_penalty=1.2, presence_penalty=0.4,
                repetition_penalty=1.3)[0]
    assert r.choices[0].text == want.generated_text


def test_chat_logprobs_and_n(oa, pipe):
    msgs = [{"role": "user", "content": "hello"}]
    r = oa.chat.completions.create(model=M, messages=msgs, max_tokens=5, temperature=0, logprobs=True,
                                   top_logprobs=2, n=2)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].message.content == r.choices[1].message.content       # greedy: the same answer
    content = r.choices[0].logprobs.content
    assert "".join(e.token for e in content) == r.choices[0].message.content
    for e in content:
        assert e.logprob <= 0 and len(e.top_logprobs) == 2 and e.bytes == list(e.token.encode())
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob
    ids = pipe.tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert r.usage.completion_tokens == 10 and r.usage.prompt_tokens == len(ids)      # the prompt counted once


def test_streamed_logprobs_and_echo_add_up_to_the_whole(oa):
    kw = dict(model=M, prompt=PROMPTS[0], max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    whole = oa.completions.create(**kw, logprobs=1).choices[0]
    chunks = list(oa.completions.create(**kw, logprobs=1, stream=True))
    tokens = [t for c in chunks for ch in c.choices if ch.logprobs for t in ch.logprobs.tokens]
    lps = [v for c in chunks for ch in c.choices if ch.logprobs for v in ch.logprobs.token_logprobs]
    assert tokens == whole.logprobs.tokens
    assert lps == pytest.approx(whole.logprobs.token_logprobs, abs=1e-6)
    echoed = list(oa.completions.create(**kw, echo=True, stream=True))
    assert echoed[0].choices[0].text == PROMPTS[0]
    assert "".join(ch.text for c in echoed for ch in c.choices) == PROMPTS[0] + whole.text
    chat = list(oa.chat.completions.create(model=M, messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                                           temperature=0, logprobs=True, stream=True, n=2))
    for i in range(2):
        text = "".join(ch.delta.content or "" for c in chat for ch in c.choices if ch.index == i)
        toks = "".join(e.token for c in chat for ch in c.choices if ch.index == i and ch.logprobs
                       for e in ch.logprobs.content)
        assert toks == text and text


def test_python_client_takes_the_penalties(cli_server, pipe):
    import fastgen_core as fg
    client = fg.client(cli_server["url"], api_key=cli_server["key"])
    kw = dict(max_new_tokens=8, ignore_eos=True, repetition_penalty=1.4, frequency_penalty=0.5)
    assert client.generate(PROMPTS[1], **kw)[0].token_ids == pipe(PROMPTS[1], **kw)[0].token_ids


def test_tokenize_and_detokenize(cli_server, pipe):
    http = cli_server["http"]
    r = http.post("/tokenize", json={"prompt": "The capital"}).json()
    assert r["tokens"] == pipe.tokenizer("The capital").input_ids and r["count"] == len(r["tokens"])
    assert r["max_model_len"] == pipe.engine.max_context
    msgs = [{"role": "user", "content": "hi"}]
    chat = http.post("/tokenize", json={"messages": msgs}).json()
    assert chat["tokens"] == list(pipe.tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True,
                                                                     return_dict=False))
    assert http.post("/detokenize", json={"tokens": r["tokens"]}).json()["prompt"] == \
        pipe.tokenizer.decode(r["tokens"])
    bad = http.post("/detokenize", json={"tokens": [5, 10 ** 6]})
    assert bad.status_code == 400 and "token ids must be in [0, " in bad.json()["error"]["message"]
    both = http.post("/tokenize", json={"prompt": "x", "messages": msgs})
    assert both.status_code == 400 and "exactly one of prompt" in both.json()["error"]["message"]
