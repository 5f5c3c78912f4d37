"""SamplingParams (validated per request) and the batched sampler over a ragged batch's logits."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .errors import InvalidRequestError


@dataclass
class SamplingParams:
    """Generation options, named as in transformers / DeepSpeed-MII.

    max_new_tokens None means "up to the model's context". Greedy when ``do_sample`` is False or
    ``temperature`` is 0. ``seed`` makes sampling reproducible whatever else is in the batch.
    ``stop`` strings are matched on decoded text and cut from the output; ``stop_token_ids`` stop on a token.
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
        for name in ("temperature", "top_p"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InvalidRequestError(f"{name} must be a finite number, got {v!r}")
        if self.temperature < 0:
            raise InvalidRequestError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise InvalidRequestError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        for t in self.stop_token_ids:
            _check_int("stop_token_ids[...]", t, 0)

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0


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
