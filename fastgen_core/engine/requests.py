"""Request processing: what happens to a request on the host, before and after the GPU.

Before: validate the prompt (text or token ids), tokenize, settle the sampling options against the model's
context and the KV cache. After each step: append the sampled token, detokenize incrementally, check end
of sequence, stop tokens, stop strings and the length limit, record logprobs, and build the per-step
``RequestOutput`` and, at the end, the ``Response``. No torch work here beyond the request's generator.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import torch

from ..errors import InvalidRequestError
from ..sampler import SamplingRow, logprobs_of
from ..sampling import SamplingParams
from ..tokenizer import IncrementalDetokenizer, fast_decode
from .outputs import RequestOutput, Response
from .sequence import Sequence


@dataclass
class PreparedRequest:
    """A request that passed every check (see RequestProcessor.prepare)."""

    token_ids: list[int]
    text: str | None
    params: SamplingParams
    grammar: object | None = None   # the compiled grammar of a constrained request (structured.py)


@dataclass
class Request:
    """A request in flight: its sequence (the scheduler's view) and what the host keeps for its outputs."""

    seq: Sequence
    params: SamplingParams
    prompt_text: str | None
    detok: IncrementalDetokenizer
    generator: torch.Generator | None
    emitted: int = 0                # chars of detok.text already streamed
    stop_hit: str | None = None
    final_text: str = ""
    logits: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    prompt_logprobs: list = field(default_factory=list)   # of prompt tokens 1.. (token 0 has none)
    grammar: object | None = None   # structured.Grammar: its matcher (structured outputs)
    row: SamplingRow | None = None  # what the sampler reads for it once nothing is banned (sampling_rows)
    arrival: float = field(default_factory=time.monotonic)
    first_scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None


class RequestProcessor:
    def __init__(self, tokenizer, eos_token_ids: set[int], vocab_size: int, max_context: int, allocator,
                 device: torch.device, model_name: str):
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.vocab_size = vocab_size
        self.max_context = max_context
        self.allocator = allocator
        self.device = device
        self.model_name = model_name
        self.requests: dict[str, Request] = {}
        self._ids = itertools.count()
        # one decode function and one memo of single-token texts for every request's detokenizer
        self._decode = fast_decode(tokenizer) if tokenizer is not None else None
        self._single_texts: dict[int, str] = {}
        self._grammars = None           # structured.GrammarCompiler, made by the first constrained request

    # ---- before the GPU ---------------------------------------------------------------------
    def validate_prompt(self, prompt) -> tuple[list[int], str | None]:
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("prompt is an empty string; give at least one character or token id")
            if self.tokenizer is None:
                raise InvalidRequestError(f"{self.model_name} has no tokenizer files: give prompts as token-id lists")
            ids = self.tokenizer(prompt).input_ids
            text = prompt
        elif isinstance(prompt, (list, tuple)):
            ids, text = list(prompt), None
            if not ids:
                raise InvalidRequestError("prompt is an empty token list; give at least one token id")
            vocab = self.vocab_size
            bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab]
            if bad:
                raise InvalidRequestError(f"token ids must be integers in [0, {vocab}); got {bad[:5]}")
        else:
            raise InvalidRequestError(f"a prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        if len(ids) >= self.max_context:
            raise InvalidRequestError(f"prompt has {len(ids)} tokens but the model's context is {self.max_context} "
                                      "tokens (the prompt must be shorter, to leave room for at least one new token)")
        return ids, text

    def resolve_params(self, params: SamplingParams, prompt_len: int) -> SamplingParams:
        room = self.max_context - prompt_len
        if params.max_new_tokens is None:
            params.max_new_tokens = max(room, 1)
        elif params.max_new_tokens > room:
            raise InvalidRequestError(f"prompt ({prompt_len} tokens) + max_new_tokens ({params.max_new_tokens}) "
                                      f"exceeds the model's context of {self.max_context} tokens")
        if params.min_new_tokens > params.max_new_tokens:
            raise InvalidRequestError(f"min_new_tokens ({params.min_new_tokens}) exceeds max_new_tokens "
                                      f"({params.max_new_tokens})")
        if params.stop and self.tokenizer is None:
            raise InvalidRequestError("stop strings need a tokenizer; this model directory has none "
                                      "(use stop_token_ids)")
        return params

    def prepare(self, prompt, params: SamplingParams | None = None) -> PreparedRequest:
        """Every check a request must pass, without queuing it (raises InvalidRequestError). Callers that
        submit several prompts at once prepare them all first, so a bad one leaves nothing queued."""
        params = params or SamplingParams()
        ids, text = self.validate_prompt(prompt)
        params = self.resolve_params(params, len(ids))
        need = self.allocator.blocks_for(len(ids) + max(params.max_new_tokens - 1, 0))
        if need > self.allocator.num_blocks:
            raise InvalidRequestError(
                f"request needs {need} KV blocks (prompt {len(ids)} + max_new_tokens {params.max_new_tokens}) "
                f"but the whole cache has {self.allocator.num_blocks}")
        grammar = self.compile_grammar(params.structured_outputs) if params.structured_outputs is not None else None
        return PreparedRequest(ids, text, params, grammar)

    def compile_grammar(self, spec: dict):
        """The compiled grammar of a ``structured_outputs`` spec (at admission, within a time limit)."""
        if self._grammars is None:
            if self.tokenizer is None:
                raise InvalidRequestError("structured_outputs needs a tokenizer; this model directory has none",
                                          param="structured_outputs")
            from ..structured import GrammarCompiler
            self._grammars = GrammarCompiler(self.tokenizer, self.vocab_size, self.eos_token_ids)
        return self._grammars.compile(spec)

    def add(self, prepared: PreparedRequest, request_id: str | None = None) -> Request:
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        if rid in self.requests:
            raise InvalidRequestError(f"request id {rid!r} is already in flight")
        params = prepared.params
        seq = Sequence(next(self._ids), rid, prepared.token_ids, params.max_new_tokens, params)
        gen = None
        if params.seed is not None and not params.greedy:
            gen = torch.Generator(device=self.device).manual_seed(params.seed)
        detok = IncrementalDetokenizer(self.tokenizer, self._decode, self._single_texts)
        req = self.requests[rid] = Request(seq, params, prepared.text, detok, gen)
        if prepared.grammar is not None:
            req.grammar = self._grammars.matcher(prepared.grammar)
        return req

    def sampling_rows(self, seqs: list[Sequence]) -> list[SamplingRow]:
        """What the sampler needs per sampled sequence (before its sample is appended): its options,
        generator, banned tokens (min_new_tokens) and token lists."""
        rows = []
        requests = self.requests
        for seq in seqs:
            req = requests[seq.request_id]
            p = req.params
            row = req.row
            if len(seq.output_token_ids) < p.min_new_tokens:
                banned = sorted((set() if p.ignore_eos else self.eos_token_ids) | set(p.stop_token_ids))
                row = SamplingRow(p, req.generator, banned, seq.prompt_token_ids, seq.output_token_ids,
                                  req.grammar)
            elif row is None or row.output_ids is not seq.output_token_ids or row.prompt_ids is not seq.prompt_token_ids:
                # nothing banned: the same row every step (it holds the sequence's token lists, not copies)
                row = req.row = SamplingRow(p, req.generator, [], seq.prompt_token_ids, seq.output_token_ids,
                                            req.grammar)
            rows.append(row)
        return rows

    # ---- after the GPU ----------------------------------------------------------------------
    def record_prompt_logprobs(self, chunks, prompt_rows, logits) -> None:
        """Record the logprobs of the prompt tokens these chunks' rows predict (positions already recorded,
        as when a preempted sequence recomputes its prompt, are skipped)."""
        row = 0
        for s, _, n in prompt_rows:
            c = chunks[s]
            req = self.requests.get(c.seq.request_id)
            if req is not None:
                have = len(req.prompt_logprobs)
                skip = max(0, have - c.start)
                if skip < n:
                    targets = c.seq.prompt_token_ids[c.start + skip + 1:c.start + n + 1]
                    req.prompt_logprobs += logprobs_of(logits[row + skip:row + n], targets,
                                                       req.params.prompt_logprobs)
            row += n

    def finish_reason(self, req: Request, tok: int, n: int | None = None) -> str | None:
        """Why the request ends with ``tok`` appended (already in its detokenizer and its outputs, as their
        ``n``-th token: by default the last one), or None."""
        seq, p = req.seq, req.params
        if n is None:
            n = len(seq.output_token_ids)
        if tok in p.stop_token_ids or (not p.ignore_eos and tok in self.eos_token_ids):
            return "stop"
        if req.grammar is not None and req.grammar.terminated:
            return "stop"
        if p.stop and n >= p.min_new_tokens:
            window = req.detok.text[max(0, req.emitted - max(map(len, p.stop))):]
            for s in p.stop:
                if s in window:
                    req.stop_hit = s
                    return "stop"
        if n >= seq.max_new_tokens:
            return "length"
        return None

    def stream_delta(self, req: Request, tok: int, lp) -> RequestOutput:
        """The output of a step that did not end the request: the text that is safe to stream so far."""
        stop = req.params.stop
        text = req.detok.text
        emitted = req.emitted
        hold = max(map(len, stop)) - 1 if stop else 0      # a stop string may still be forming
        upto = max(emitted, len(text) - hold)
        req.emitted = upto
        return RequestOutput(req.seq.request_id, [tok], text[emitted:upto], False,
                             logprobs=[lp] if lp is not None else None)

    def final_output(self, req: Request, tok: int, reason: str, lp) -> RequestOutput:
        """The last output of a request (its sequence already finished with ``reason``)."""
        response = self.response(req)
        delta = req.final_text[req.emitted:]
        return RequestOutput(req.seq.request_id, [tok], delta, True, reason, response,
                             [lp] if lp is not None else None)

    def final_text(self, req: Request) -> str:
        """The whole output decoded at once (the incremental text may hold back an incomplete character),
        cut at the stop string that ended it."""
        if self.tokenizer is None:
            return ""
        text = self.tokenizer.decode(req.seq.output_token_ids, skip_special_tokens=True)
        if req.stop_hit is not None:
            text = text[:text.find(req.stop_hit)]
        return text

    def response(self, req: Request) -> Response:
        seq, p = req.seq, req.params
        text = req.final_text = self.final_text(req)
        if p.return_full_text:
            prompt = req.prompt_text
            if prompt is None and self.tokenizer is not None:          # a token-id prompt: its text
                prompt = self.tokenizer.decode(seq.prompt_token_ids, skip_special_tokens=True)
            text = (prompt or "") + text
        return Response(text, list(seq.output_token_ids), len(seq.prompt_token_ids), len(seq.output_token_ids),
                        seq.finish_reason, seq.request_id, req.logits if p.return_logits else None,
                        req.logprobs if p.logprobs is not None else None,
                        [None, *req.prompt_logprobs] if p.prompt_logprobs is not None else None,
                        seq.prompt_token_ids)

    def timing(self, request_id: str) -> dict | None:
        req = self.requests.get(request_id)
        if req is None:
            return None
        return {"arrival": req.arrival, "first_scheduled": req.first_scheduled, "first_token": req.first_token}
