"""SamplingParams (validated per request) and the batched sampler over a ragged batch's logits."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch

from .errors import InvalidRequestError


@dataclass
class SamplingParams:
    """Generation options, named as in transformers / DeepSpeed-MII.

    max_new_tokens None means "up to the model's context". Greedy when ``do_sample`` is False or
    ``temperature`` is 0. ``seed`` makes sampling reproducible whatever else is in the batch.
    ``stop`` strings are matched on decoded text and cut from the output; ``stop_token_ids`` stop on a token.
    ``repetition_penalty`` (transformers' and vLLM's: >1 discourages every token already in the prompt or
    the output, dividing positive logits and multiplying negative ones), ``presence_penalty`` and
    ``frequency_penalty`` (OpenAI's, in [-2, 2]: subtracted once per generated token id, and once per
    occurrence) change the logits before sampling or argmax. ``logprobs`` (0..20) returns, for every
    generated token, its log-probability under the model (log-softmax of the raw logits) and the
    ``logprobs`` most likely alternatives; ``prompt_logprobs`` the same for every prompt token after the
    first (scoring text, as evaluation harnesses do; such a request does not use the prefix cache).
    """

    max_new_tokens: int | None = None
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    return_full_text: bool = False
    return_logits: bool = False   # keep the float32 logits of every sampled position (tests, debugging)
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    prompt_logprobs: int | None = None

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        _check_int("max_new_tokens", self.max_new_tokens, 1, allow_none=True)
        _check_int("min_new_tokens", self.min_new_tokens, 0)
        _check_int("top_k", self.top_k, 0)
        if self.seed is not None:
            _check_int("seed", self.seed, 0)
        if self.max_new_tokens is not None and self.min_new_tokens > self.max_new_tokens:
            raise InvalidRequestError(f"min_new_tokens ({self.min_new_tokens}) must be <= max_new_tokens "
                                      f"({self.max_new_tokens})")
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            _check_int(name, v, 0, allow_none=True)
            if v is not None and v > MAX_LOGPROBS:
                raise InvalidRequestError(f"{name} must be in 0..{MAX_LOGPROBS}, got {v}")
        for name in ("temperature", "top_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InvalidRequestError(f"{name} must be a finite number, got {v!r}")
        if self.temperature < 0:
            raise InvalidRequestError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise InvalidRequestError(f"repetition_penalty must be > 0 (1: none), got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise InvalidRequestError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise InvalidRequestError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        for t in self.stop_token_ids:
            _check_int("stop_token_ids[...]", t, 0)

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0


MAX_LOGPROBS = 20
# options that only act when sampling, with the values that mean "not given"
SAMPLING_ONLY = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": None}
_warned_unused: set[tuple[str, ...]] = set()


def warn_unused_sampling_options(options: dict) -> None:
    """As transformers' generate does: sampling options given without ``do_sample=True`` are ignored
    (decoding is greedy), which a UserWarning says, once per process for each set of such options."""
    if options.get("do_sample"):
        return
    given = tuple(k for k, unset in SAMPLING_ONLY.items() if options.get(k, unset) != unset)
    if not given or given in _warned_unused:
        return
    _warned_unused.add(given)
    shown = ", ".join(f"{k}={options[k]!r}" for k in given)
    warnings.warn(f"{shown} only act when sampling, but do_sample is False, so decoding is greedy and "
                  f"{'they are' if len(given) > 1 else 'it is'} ignored; pass do_sample=True to sample "
                  "(this warning is shown once)", UserWarning, stacklevel=3)


def _check_int(name, v, lo, allow_none=False):
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidRequestError(f"{name} must be an integer, got {v!r}")
    if v < lo:
        raise InvalidRequestError(f"{name} must be >= {lo}, got {v}")


@dataclass
class SamplingRow:
    """What the sampler needs about one row of the logits."""

    params: SamplingParams
    generator: torch.Generator | None     # per-request generator when a seed was given
    banned: list[int]                     # ids masked for this step (EOS before min_new_tokens)
    prompt_ids: list[int] | None = None   # the sequence so far, for penalties (only penalized rows need it)
    output_ids: list[int] | None = None


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
        logits = apply_penalties(logits.float(), rows)
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
