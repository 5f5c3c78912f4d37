"""The batched sampler over a ragged batch's logits: penalties, bans, greedy and sampled rows, logprobs.

The options it reads are SamplingParams (sampling.py, which imports no torch); whether a row is greedy is
``SamplingParams.greedy``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:      # only annotations: sampling.py imports this module on demand (its Sampler names)
    from .sampling import SamplingParams


@dataclass
class SamplingRow:
    """What the sampler needs about one row of the logits."""

    params: SamplingParams
    generator: torch.Generator | None     # per-request generator when a seed was given
    banned: list[int]                     # ids masked for this step (EOS before min_new_tokens)
    prompt_ids: list[int] | None = None   # the sequence so far, for penalties (only penalized rows need it)
    output_ids: list[int] | None = None
    grammar: object | None = None         # structured.Grammar of a constrained row (structured outputs)


@dataclass
class TokenLogprob:
    """A generated token's log-probability and the most likely alternatives at its position."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]          # (token id, logprob), most likely first


def apply_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Repetition, presence and frequency penalties on the rows that ask for them (a copy if any does)."""
    pen = [i for i, r in enumerate(rows) if r.params.penalized]
    if not pen:
        return logits
    logits = logits.clone()
    dev = logits.device
    for i in pen:                         # penalties are opt-in and per row: a short loop over those rows
        p, out = rows[i].params, rows[i].output_ids or []
        if p.repetition_penalty != 1:
            # as transformers' RepetitionPenaltyLogitsProcessor: every id of prompt and output, once
            ids = torch.tensor(sorted(set(rows[i].prompt_ids or []) | set(out)), dtype=torch.long, device=dev)
            if ids.numel():
                sel = logits[i, ids]
                logits[i, ids] = torch.where(sel < 0, sel * p.repetition_penalty, sel / p.repetition_penalty)
        if out and (p.presence_penalty or p.frequency_penalty):
            ids, counts = torch.tensor(out, dtype=torch.long, device=dev).unique(return_counts=True)
            logits[i, ids] -= p.frequency_penalty * counts.to(logits.dtype) + p.presence_penalty
    return logits


def token_logprobs(logits: torch.Tensor, tokens: list[int], rows: list[SamplingRow]) -> list[TokenLogprob | None]:
    """For the rows with ``logprobs`` set: the chosen token's log-probability under the raw logits and its
    row's number of top alternatives; None for the other rows."""
    want = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
    out: list[TokenLogprob | None] = [None] * len(rows)
    if want:
        k = max(rows[i].params.logprobs for i in want)
        got = logprobs_of(logits.index_select(0, torch.tensor(want, device=logits.device)), [tokens[i] for i in want], k)
        for i, tl in zip(want, got):
            tl.top = tl.top[:rows[i].params.logprobs]
            out[i] = tl
    return out


def logprobs_of(logits: torch.Tensor, targets: list[int], k: int) -> list[TokenLogprob]:
    """TokenLogprobs of ``targets[i]`` under row i of ``logits`` (log-softmax in float32), with the ``k`` most
    likely alternatives; one device-to-host copy for all rows."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    chosen = lp.gather(1, torch.tensor(targets, device=lp.device).unsqueeze(1)).squeeze(1).tolist()
    top_lp, top_ids = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())
    return [TokenLogprob(t, c, list(zip(i, v))) for t, c, i, v in zip(targets, chosen, top_ids.tolist(),
                                                                        top_lp.tolist())]


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask (to -inf) everything outside each row's top-k and nucleus top-p. Batched, no loop over rows.

    top_k: int64 [n] with 0 meaning no limit; top_p: float [n] with 1 meaning no limit.
    """
    sorted_logits, idx = logits.sort(dim=-1, descending=True)
    vocab = logits.shape[-1]
    ranks = torch.arange(vocab, device=logits.device).expand_as(sorted_logits)
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab)).unsqueeze(1)
    drop = ranks >= k
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    # a token is kept while the mass strictly before it is < top_p: the top token is always kept
    before = probs.cumsum(dim=-1) - probs
    drop |= before >= top_p.unsqueeze(1)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, idx, sorted_logits)


class Sampler:
    """Samples one token per row. Greedy rows take the argmax; sampled rows use the exponential-race
    (Gumbel-max) trick so a seeded row's draw depends only on its own generator."""

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        logits = logits.float()
        if any(r.grammar is not None for r in rows):     # structured outputs: mask before everything else
            from .structured import apply_grammar_masks
            logits = apply_grammar_masks(logits, rows)
        logits = apply_penalties(logits, rows)
        n, vocab = logits.shape
        ban_rows = [i for i, r in enumerate(rows) for _ in r.banned]
        if ban_rows:                     # one indexed write for every row (min_new_tokens bans EOS on most)
            ban_cols = [t for r in rows for t in r.banned]
            idx = torch.tensor([ban_rows, ban_cols], dtype=torch.long)
            if logits.is_cuda:
                idx = idx.pin_memory()
            idx = idx.to(logits.device, non_blocking=True)
            logits = logits.clone()      # the caller may keep the raw logits (return_logits)
            logits[idx[0], idx[1]] = float("-inf")
        greedy = [r.params.greedy for r in rows]
        out = logits.argmax(dim=-1)
        if all(greedy):
            return out
        dev = logits.device
        temps = torch.tensor([1.0 if g else r.params.temperature for g, r in zip(greedy, rows)], device=dev)
        top_k = torch.tensor([r.params.top_k for r in rows], device=dev, dtype=torch.long)
        top_p = torch.tensor([r.params.top_p for r in rows], device=dev)
        scaled = apply_top_k_top_p(logits / temps.unsqueeze(1), top_k, top_p)
        probs = scaled.softmax(dim=-1)
        noise = torch.empty_like(probs).exponential_()
        for i, r in enumerate(rows):
            if r.generator is not None and not greedy[i]:
                noise[i] = torch.empty(vocab, device=dev).exponential_(generator=r.generator)
        sampled = (probs / noise).argmax(dim=-1)
        mask = torch.tensor(greedy, device=dev)
        return torch.where(mask, out, sampled)
