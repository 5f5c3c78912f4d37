"""Repetition / presence / frequency penalties and per-token logprobs, against transformers on a tiny Llama:
greedy tokens under repetition_penalty equal generate(repetition_penalty=...); presence and frequency
penalties equal a step-by-step loop over transformers' logits; logprobs equal transformers' log-softmax
at every generated position, whatever the token budget."""
import copy

import pytest
import torch

import fastgen_core as fg
from fastgen_core.errors import InvalidRequestError
from fastgen_core.sampler import Sampler, SamplingRow
from fastgen_core.sampling import SamplingParams
from fastgen_core.testing import random_prompts, save_tiny_model

PROMPTS = random_prompts(6, 128, 1, 60, seed=4)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from transformers import LlamaConfig
    path = tmp_path_factory.mktemp("pen")
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                      num_hidden_layers=2, vocab_size=128, max_position_embeddings=512)
    # a small init gives flat logits that keep repeating the same few tokens: the penalties matter
    return path, save_tiny_model(cfg, path, init_std=0.02)


def hf_generate(ref, prompt, n, **kw):
    gc = copy.deepcopy(ref.generation_config)
    gc.eos_token_id, gc.pad_token_id, gc.do_sample, gc.max_new_tokens, gc.min_new_tokens = -1, 0, False, n, None
    for k, v in kw.items():
        setattr(gc, k, v)
    ids = torch.tensor([prompt])
    return ref.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gc)[0, len(prompt):].tolist()


@torch.no_grad()
def hf_loop(ref, prompt, n, presence=0.0, frequency=0.0):
    """Greedy with OpenAI's penalties applied to transformers' logits: the oracle written out."""
    seq, out = list(prompt), []
    for _ in range(n):
        logits = ref(torch.tensor([seq])).logits[0, -1].float()
        for t in set(out):
            logits[t] -= presence + frequency * out.count(t)
        tok = int(logits.argmax())
        out.append(tok)
        seq.append(tok)
    return out


@pytest.mark.parametrize("budget", [7, 512])
def test_repetition_penalty_matches_transformers(model, budget):
    path, ref = model
    pipe = fg.pipeline(str(path), device="cpu", dtype="float32", kv_block_size=4, max_ragged_batch_size=budget)
    try:
        got = [o.token_ids for o in pipe(PROMPTS, max_new_tokens=12, ignore_eos=True, repetition_penalty=1.8)]
        plain = [o.token_ids for o in pipe(PROMPTS, max_new_tokens=12, ignore_eos=True)]
    finally:
        pipe.destroy()
    want = [hf_generate(ref, p, 12, repetition_penalty=1.8) for p in PROMPTS]
    assert got == want
    assert got != plain                      # the penalty changed something, so the test can tell


def test_presence_and_frequency_penalties_match_the_oracle(model):
    path, ref = model
    pipe = fg.pipeline(str(path), device="cpu", dtype="float32", kv_block_size=4, max_ragged_batch_size=16)
    try:
        for presence, frequency in ((1.5, 0.0), (0.0, 0.7), (0.5, -0.3)):
            got = [o.token_ids for o in pipe(PROMPTS, max_new_tokens=10, ignore_eos=True,
                                             presence_penalty=presence, frequency_penalty=frequency)]
            assert got == [hf_loop(ref, p, 10, presence, frequency) for p in PROMPTS], (presence, frequency)
        plain = [o.token_ids for o in pipe(PROMPTS, max_new_tokens=10, ignore_eos=True)]
        assert plain != [hf_loop(ref, p, 10, 1.5) for p in PROMPTS]
    finally:
        pipe.destroy()


@pytest.mark.parametrize("budget", [5, 512])
def test_logprobs_are_transformers_log_softmax(model, budget):
    path, ref = model
    pipe = fg.pipeline(str(path), device="cpu", dtype="float32", kv_block_size=4, max_ragged_batch_size=budget)
    try:
        outs = pipe(PROMPTS, max_new_tokens=6, ignore_eos=True, logprobs=3)
        mixed = pipe(PROMPTS[:2], max_new_tokens=6, ignore_eos=True, do_sample=True, seed=1, logprobs=0)
        none = pipe(PROMPTS[:1], max_new_tokens=2, ignore_eos=True)
    finally:
        pipe.destroy()
    for p, o in zip(PROMPTS, outs):
        assert len(o.logprobs) == 6
        with torch.no_grad():
            lp = torch.log_softmax(ref(torch.tensor([p + o.token_ids])).logits[0].float(), dim=-1)
        for i, (tok, tl) in enumerate(zip(o.token_ids, o.logprobs)):
            row = lp[len(p) - 1 + i]
            assert tl.token_id == tok and tl.logprob == pytest.approx(row[tok].item(), abs=1e-4)
            assert [t for t, _ in tl.top] == row.topk(3).indices.tolist()
            assert [v for _, v in tl.top] == pytest.approx(row.topk(3).values.tolist(), abs=1e-4)
            assert tl.top[0][0] == tok                  # greedy picks the most likely token
    for p, o in zip(PROMPTS, mixed):                     # sampled tokens: their own logprob, no alternatives
        with torch.no_grad():
            lp = torch.log_softmax(ref(torch.tensor([p + o.token_ids])).logits[0].float(), dim=-1)
        assert [tl.top for tl in o.logprobs] == [[]] * 6
        assert [tl.logprob for tl in o.logprobs] == pytest.approx(
            [lp[len(p) - 1 + i, t].item() for i, t in enumerate(o.token_ids)], abs=1e-4)
    assert none[0].logprobs is None


def test_penalties_on_one_row_leave_the_others_alone():
    logits = torch.tensor([[3.0, 2.0, 1.0, -1.0]] * 3)
    rows = [SamplingRow(SamplingParams(), None, []),
            SamplingRow(SamplingParams(repetition_penalty=4.0), None, [], [0], [1]),
            SamplingRow(SamplingParams(frequency_penalty=1.0, presence_penalty=0.5), None, [], [9], [0, 0, 1])]
    assert Sampler()(logits, rows).tolist() == [0, 2, 2]     # row 2: 3 - 2.5 = 0.5, 2 - 1.5 = 0.5, 1 -> token 2
    assert logits[0].tolist() == [3.0, 2.0, 1.0, -1.0]       # the caller's logits are not modified


@pytest.mark.parametrize("kw,words", [
    (dict(logprobs=21), "logprobs must be in 0..20"),
    (dict(logprobs=-1), "logprobs must be >= 0"),
    (dict(repetition_penalty=0), "repetition_penalty must be > 0"),
    (dict(presence_penalty=2.5), r"presence_penalty must be in \[-2, 2\]"),
    (dict(frequency_penalty=float("nan")), "frequency_penalty must be a finite number"),
])
def test_bad_values_are_refused_by_name(kw, words):
    with pytest.raises(InvalidRequestError, match=words):
        SamplingParams(**kw)


@pytest.mark.parametrize("opts", [dict(max_ragged_batch_size=7),                      # prompts in many chunks
                                  dict(max_ragged_batch_size=64, num_kv_blocks="tight"),   # preemption, recompute
                                  dict(max_ragged_batch_size=512, enable_prefix_caching=True)])
def test_prompt_logprobs_score_every_prompt_token_like_transformers(model, opts):
    path, ref = model
    if opts.get("num_kv_blocks") == "tight":          # room for about one sequence at a time
        opts = {**opts, "num_kv_blocks": -(-(max(map(len, PROMPTS)) + 4) // 4) + 1}
    pipe = fg.pipeline(str(path), device="cpu", dtype="float32", kv_block_size=4, **opts)
    try:
        if opts.get("enable_prefix_caching"):
            pipe(PROMPTS, max_new_tokens=2, ignore_eos=True)       # cache the prompts: scoring must not use it
        outs = pipe(PROMPTS, max_new_tokens=4, ignore_eos=True, prompt_logprobs=2)
        stats = pipe.engine.stats()
    finally:
        pipe.destroy()
    if opts.get("num_kv_blocks"):
        assert stats["preemptions"] > 0
    for p, o in zip(PROMPTS, outs):
        assert len(o.prompt_logprobs) == len(p) and o.prompt_logprobs[0] is None and o.logprobs is None
        with torch.no_grad():
            lp = torch.log_softmax(ref(torch.tensor([p])).logits[0].float(), dim=-1)
        for i in range(1, len(p)):
            tl = o.prompt_logprobs[i]
            assert tl.token_id == p[i] and tl.logprob == pytest.approx(lp[i - 1, p[i]].item(), abs=1e-4)
            assert [t for t, _ in tl.top] == lp[i - 1].topk(2).indices.tolist()
