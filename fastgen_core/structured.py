"""Structured outputs (constrained decoding) with xgrammar: a request's output follows a JSON schema, any JSON
object, a regex, one of a list of strings, or an EBNF grammar (SamplingParams.structured_outputs).

One ``GrammarCompiler`` per engine (per tokenizer) turns a spec into an xgrammar compiled grammar when the
request is prepared (admission), within ``COMPILE_TIMEOUT_S``; a spec it cannot compile is an
InvalidRequestError naming the field. Compiled grammars are kept in a bounded LRU keyed by (kind, spec).
Each sequence gets its own ``GrammarMatcher`` (n choices: one each). At every step where constrained rows
sample, ``apply_grammar_masks`` fills their rows of a token bitmask and masks their logits before penalties,
temperature and top-k/top-p; once the token is known the matcher accepts it (``Grammar.accept``). The end of
sequence token is allowed only where the grammar can end; a matcher that has terminated finishes the
sequence with "stop". Rows without a grammar cost nothing: no bitmask is built when no row has one.

Preemption (recompute) keeps the generated tokens, and each of them was accepted by the matcher when it was
read back, so the matcher still matches the tokens kept. A step with a constrained row is resolved before the
next one is scheduled (the engine's asynchronous scheduling waits for it), so the matcher has accepted every
token before the next mask is filled.

xgrammar is imported only when a request is constrained.
"""
from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from .errors import InvalidRequestError

KINDS = ("json", "json_object", "regex", "choice", "grammar")
FIELD = "structured_outputs"
COMPILE_TIMEOUT_S = 20.0
CACHE_SIZE = 128


def check_spec(spec, param: str = FIELD) -> None:
    """The shape of a ``structured_outputs`` value (without compiling it): exactly one known key with a value
    of the right type. Raises InvalidRequestError naming ``param``."""
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise InvalidRequestError(f"{param} must be an object with exactly one of the keys {', '.join(KINDS)}, "
                                  f"got {spec!r}", param=param)
    kind, value = next(iter(spec.items()))
    ok = {"json": isinstance(value, (dict, str)) and not isinstance(value, bool),
          "json_object": value is True,
          "regex": isinstance(value, str) and value != "",
          "choice": isinstance(value, list) and bool(value) and all(isinstance(c, str) for c in value),
          "grammar": isinstance(value, str) and value.strip() != ""}[kind]
    if not ok:
        want = {"json": "a JSON schema (an object, or a string holding one)", "json_object": "true",
                "regex": "a non-empty regular expression string", "choice": "a non-empty list of strings",
                "grammar": "a non-empty EBNF grammar string"}[kind]
        raise InvalidRequestError(f"{param}.{kind} must be {want}, got {value!r}", param=param)


def _key(spec: dict) -> tuple[str, str]:
    kind, value = next(iter(spec.items()))
    return kind, value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _choice_regex(choices: list[str]) -> str:
    return "(" + "|".join(re.escape(c) for c in choices) + ")"


class GrammarCompiler:
    """xgrammar's compiler over one tokenizer whose logits are ``vocab_size`` wide, with an LRU of compiled
    grammars. ``stop_token_ids`` are the model's end-of-sequence ids (allowed where the grammar can end)."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids, cache_size: int = CACHE_SIZE,
                 timeout_s: float = COMPILE_TIMEOUT_S):
        import xgrammar as xgr
        self.xgr = xgr
        self.vocab_size = vocab_size
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                  stop_token_ids=sorted(stop_token_ids))
        self.compiler = xgr.GrammarCompiler(info, max_threads=2)
        self.cache: OrderedDict = OrderedDict()
        self.cache_size = cache_size
        self.timeout_s = timeout_s
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="fastgen-grammar")

    def _compile(self, kind: str, value):
        c = self.compiler
        if kind == "json":
            schema = value if isinstance(value, str) else json.dumps(value)
            return c.compile_json_schema(schema, any_whitespace=False)
        if kind == "json_object":
            return c.compile_json_schema('{"type": "object"}', any_whitespace=False)
        if kind == "regex":
            return c.compile_regex(value)
        if kind == "choice":
            return c.compile_regex(_choice_regex(value))
        return c.compile_grammar(value)

    def compile(self, spec: dict, param: str = FIELD):
        """The compiled grammar of ``spec`` (cached); a spec that does not compile, or not within the time
        limit, raises InvalidRequestError naming ``param``."""
        check_spec(spec, param)
        key = _key(spec)
        with self.lock:
            hit = self.cache.get(key)
            if hit is not None:
                self.cache.move_to_end(key)
                return hit
        kind, value = next(iter(spec.items()))
        if kind == "json" and isinstance(value, str):
            try:
                json.loads(value)
            except ValueError as e:
                raise InvalidRequestError(f"{param}.json is not valid JSON: {e}", param=param) from None
        future = self.pool.submit(self._compile, kind, value)
        try:
            compiled = future.result(timeout=self.timeout_s)
        except FutureTimeout:
            raise InvalidRequestError(f"{param}.{kind} did not compile within {self.timeout_s:g} s; give a simpler "
                                      f"one", param=param) from None
        except Exception as e:     # noqa: BLE001 - xgrammar raises RuntimeError/ValueError for a bad spec
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            first = re.sub(r"^\[[0-9:]+\] \S+:[0-9]+: ", "", first)      # xgrammar's time and source line
            raise InvalidRequestError(f"{param}.{kind} is invalid: {first}", param=param) from None
        with self.lock:
            self.cache[key] = compiled
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return compiled

    def matcher(self, compiled) -> "Grammar":
        return Grammar(self.xgr.GrammarMatcher(compiled), self.vocab_size)


class Grammar:
    """One sequence's matcher: which tokens may come next, and the tokens it has accepted."""

    def __init__(self, matcher, vocab_size: int):
        self.matcher = matcher
        self.vocab_size = vocab_size

    def accept(self, token: int) -> bool:
        """Advance over a sampled token; False if the grammar did not allow it."""
        if self.matcher.is_terminated():
            return False
        return self.matcher.accept_token(token)

    @property
    def terminated(self) -> bool:
        return self.matcher.is_terminated()


def apply_grammar_masks(logits, rows) -> object:
    """Mask, in ``logits`` (a copy is returned when any row is constrained), every token the row's grammar does
    not allow next. Rows whose ``grammar`` is None are untouched; with none constrained nothing is done."""
    constrained = [i for i, r in enumerate(rows) if r.grammar is not None and not r.grammar.terminated]
    if not constrained:
        return logits
    import xgrammar as xgr
    bitmask = xgr.allocate_token_bitmask(len(rows), logits.shape[-1])
    for i in constrained:
        rows[i].grammar.matcher.fill_next_token_bitmask(bitmask, i)
    logits = logits.clone()        # the caller keeps the raw logits (logprobs, return_logits)
    # xgrammar's kernel on CUDA, its torch path on CPU
    xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device, non_blocking=True), indices=constrained)
    return logits
