"""The generate options, declared once: ``SamplingParams``. Every surface is derived from its fields.
(The batched sampler that reads them is sampler.py.)

Each option is a field with its default, bounds and meaning (``option(...)``); the field's metadata also says
how each front end spells it:

- the engine, the pipeline and ``fastgen_core.client``: SamplingParams itself, validated from the bounds;
- POST /generate (``"native"``): the same names and defaults;
- OpenAI's /v1/completions and /v1/chat/completions (``"openai"``): OpenAI's and vLLM's names, each option
  optional, absent meaning the engine's default;
- DeepSpeed-MII's POST /mii (``"mii"``): MII's defaults (sampling, top_p 0.9);
- ``fastgen generate`` (``add_cli_flags``): one flag per option, where any sampling flag means sampling.

server/protocol.py builds the HTTP request models from ``wire_fields`` (pydantic stays at the HTTP boundary)
and the replica turns a validated body into SamplingParams with ``from_wire``. Whether a request is greedy is
decided in one place, ``SamplingParams.greedy``: ``do_sample`` False or ``temperature`` 0. A front end that
samples (OpenAI always, MII by default) passes ``do_sample=True`` and its temperature; 0 then means greedy.
No torch here: the client and the command line import it.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import InvalidRequestError

MAX_LOGPROBS = 20
INT64_MAX = 2 ** 63 - 1
ENGINE = object()          # a front end's default that is the engine's


@dataclass(frozen=True)
class Wire:
    """How one front end spells an option: its name there (None: the engine's), its default there (ENGINE: the
    engine's; None: optional, absent meaning the engine's default), its description, bounds that replace the
    engine's (OpenAI's top_k accepts -1), and a conversion of a given value to the engine's."""

    name: str | None = None
    default: Any = ENGINE
    doc: str | None = None
    bounds: dict | None = None
    convert: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class Flag:
    """A ``fastgen generate`` flag: its help and default (None: the flag is not given)."""

    help: str
    default: Any = None


@dataclass(frozen=True)
class Option:
    doc: str
    bounds: dict                      # ge / gt / le of the value (pydantic's names)
    note: str = ""                    # said after the range in an error ("1: none")
    wire_type: Any = None             # the type a request body may give, when wider than the field's
    wire_bounds: dict | None = None   # extra bounds on the wire (seed: what JSON integers the server takes)
    sampling_only: bool = False       # only acts when sampling (ignored, with a warning, without do_sample)
    front_ends: dict = field(default_factory=dict)   # "native" / "openai" / "mii" -> Wire
    flag: Flag | None = None


def option(default, doc: str, *, ge=None, gt=None, le=None, note: str = "", wire_type=None, wire_bounds=None,
           sampling_only: bool = False, native: Wire | None = Wire(), openai: Wire | None = None,
           mii: Wire | None = None, flag: Flag | None = None):
    """A SamplingParams field: ``default`` (a list default is copied per instance), what it means, its bounds and
    its spelling on each front end (None: that front end does not have it)."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le)) if v is not None}
    front_ends = {k: w for k, w in (("native", native), ("openai", openai), ("mii", mii)) if w is not None}
    meta = {"option": Option(doc, bounds, note, wire_type, wire_bounds, sampling_only, front_ends, flag)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


STOP_DOC = "strings that end generation, matched on the decoded text and cut from it"


@dataclass
class SamplingParams:
    """Generation options, named as in transformers / DeepSpeed-MII (each field's ``option`` says what it means).

    Greedy when ``do_sample`` is False or ``temperature`` is 0. ``seed`` makes sampling reproducible whatever
    else is in the batch. ``repetition_penalty`` is transformers' and vLLM's (>1 discourages every token
    already in the prompt or the output, dividing positive logits and multiplying negative ones),
    ``presence_penalty`` and ``frequency_penalty`` OpenAI's (subtracted once per generated token id, and once
    per occurrence); they change the logits before sampling or argmax. ``logprobs`` returns, for every
    generated token, its log-probability under the model (log-softmax of the raw logits) and the ``logprobs``
    most likely alternatives; ``prompt_logprobs`` the same for every prompt token after the first (scoring
    text, as evaluation harnesses do; such a request does not use the prefix cache).
    """

    max_new_tokens: int | None = option(
        None, "tokens to generate at most; None: up to the model's context", ge=1,
        native=Wire(doc="null: up to the model's context"), mii=Wire(), flag=Flag("tokens to generate at most", 64))
    min_new_tokens: int = option(
        0, "EOS and stop strings are ignored before this many tokens", ge=0,
        openai=Wire("min_tokens", None, "EOS and stop tokens are banned before this many"), mii=Wire(),
        flag=Flag("EOS and stop strings are ignored before this many", 0))
    do_sample: bool = option(False, "sample; False: greedy (the argmax)", mii=Wire(default=True))
    temperature: float = option(
        1.0, "divides the logits before sampling; 0: greedy", ge=0, sampling_only=True,
        openai=Wire(default=None, doc="absent: 1.0 (sampling, as OpenAI); 0: greedy"), mii=Wire(default=None),
        flag=Flag("sample at this temperature; 0: greedy (default: greedy, or 1.0 when another sampling flag is "
                  "given)"))
    top_k: int = option(
        0, "sample among the k most likely tokens; 0: no limit", ge=0, sampling_only=True,
        openai=Wire(default=None, doc="0 or -1: no limit", bounds={"ge": -1}, convert=lambda k: 0 if k == -1 else k),
        mii=Wire(default=None),
        flag=Flag("sample among the k most likely tokens; implies sampling (default: no limit)"))
    top_p: float = option(
        1.0, "sample from the smallest set of tokens whose probability reaches p (nucleus)", gt=0, le=1,
        sampling_only=True, openai=Wire(default=None), mii=Wire(default=0.9),
        flag=Flag("sample from the smallest set of tokens whose probability reaches p; implies sampling "
                  "(default: 1.0)"))
    seed: int | None = option(
        None, "seed of this request's sampler (the same sample whatever else is batched)", ge=0,
        wire_bounds={"le": INT64_MAX}, sampling_only=True, openai=Wire(default=None),
        flag=Flag("seed of the sampler; implies sampling (default: random)"))
    stop: list[str] = option(
        [], STOP_DOC, wire_type=str | list[str], mii=Wire(), openai=Wire(default=None),
        flag=Flag("stop string (repeatable)"))
    stop_token_ids: list[int] = option([], "token ids that end generation", openai=Wire(default=None))
    ignore_eos: bool = option(False, "keep generating after the end-of-sequence token", openai=Wire(), mii=Wire(),
                              flag=Flag("keep generating after the end-of-sequence token"))
    return_full_text: bool = option(False, "the prompt's text before the generated text", mii=Wire())
    return_logits: bool = option(False, "keep the float32 logits of every sampled position (tests, debugging)",
                                 native=None)
    repetition_penalty: float = option(
        1.0, "transformers' and vLLM's repetition penalty; 1: none", gt=0, note="1: none",
        openai=Wire(default=None, doc="transformers'/vLLM's; 1: none"))
    presence_penalty: float = option(0.0, "OpenAI's presence penalty", ge=-2, le=2, openai=Wire(default=None))
    frequency_penalty: float = option(0.0, "OpenAI's frequency penalty", ge=-2, le=2, openai=Wire(default=None))
    logprobs: int | None = option(
        None, "each generated token's log-probability and this many most likely alternatives", ge=0,
        le=MAX_LOGPROBS, native=None)
    prompt_logprobs: int | None = option(
        None, "the same for every prompt token after the first", ge=0, le=MAX_LOGPROBS, native=None)
    structured_outputs: dict | None = option(
        None, "constrain the output (structured outputs): exactly one of {'json': schema}, {'json_object': true}, "
        "{'regex': str}, {'choice': [str, ...]}, {'grammar': EBNF str}",
        openai=Wire(default=None, doc="vLLM's: one of json, json_object, regex, choice, grammar"))

    def __post_init__(self):
        stop_given = self.stop
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        for name in (n for n, k in KINDS.items() if k is int):
            _check_int(name, getattr(self, name), **OPTIONS[name].bounds)
            if name == "min_new_tokens" and self.max_new_tokens is not None \
                    and self.min_new_tokens > self.max_new_tokens:
                raise InvalidRequestError(f"min_new_tokens ({self.min_new_tokens}) must be <= max_new_tokens "
                                          f"({self.max_new_tokens})")
        floats = [n for n, k in KINDS.items() if k is float]
        for name in floats:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InvalidRequestError(f"{name} must be a finite number, got {v!r}")
        for name in floats:
            _check_range(name, getattr(self, name), OPTIONS[name])
        if not all(isinstance(s, str) and s for s in self.stop):
            # an empty stop string would match before every token; no stop string is [] (or leaving it out)
            raise InvalidRequestError(f"stop must be a list of non-empty strings (or one non-empty string), got "
                                      f"{stop_given!r}; for no stop string leave it out or give []", param="stop")
        for t in self.stop_token_ids:
            _check_int("stop_token_ids[...]", t, ge=0)
        if self.structured_outputs is not None:
            from .structured import check_spec       # its shape; the engine compiles it when it admits the request
            check_spec(self.structured_outputs)

    @property
    def greedy(self) -> bool:
        """The one rule for greedy decoding: not sampling, or sampling at temperature 0."""
        return not self.do_sample or self.temperature == 0

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0

    def for_choices(self, n: int) -> list["SamplingParams"]:
        """``n`` requests' params for n choices of one prompt: with a seed, the i-th gets seed + i (so seeded
        choices differ and each is reproducible)."""
        out = []
        for i in range(n):
            p = dataclasses.replace(self)
            if p.seed is not None:
                p.seed = (p.seed + i) % (2 ** 63)
            out.append(p)
        return out

    @classmethod
    def from_wire(cls, front_end: str, body, **fixed) -> "SamplingParams":
        """SamplingParams from a validated request body of ``front_end`` ("native", "openai", "mii"): each option
        the body has, under that front end's name (absent or null: the engine's default), converted as that
        front end means it; plus ``fixed`` (what the endpoint decides itself: OpenAI's max_tokens, logprobs).
        OpenAI always samples (``do_sample=True``; temperature 0 is greedy)."""
        kwargs = {"do_sample": True} if front_end == "openai" else {}
        for name, opt in OPTIONS.items():
            wire = opt.front_ends.get(front_end)
            if wire is None:
                continue
            value = getattr(body, wire.name or name)
            if value is None and wire.default is not ENGINE:
                continue                              # absent: the engine's default
            kwargs[name] = wire.convert(value) if wire.convert is not None else value
        return cls(**{**kwargs, **fixed})


OPTIONS: dict[str, Option] = {f.name: f.metadata["option"] for f in dataclasses.fields(SamplingParams)}
# options that only act when sampling, with the values that mean "not given"
SAMPLING_ONLY = {n: SamplingParams.__dataclass_fields__[n].default for n, o in OPTIONS.items() if o.sampling_only}


def _kind(hint) -> type:
    """An option's value type, int, float, bool or list, from its annotation (``int | None``: int)."""
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


HINTS = typing.get_type_hints(SamplingParams)
KINDS: dict[str, type] = {name: _kind(hint) for name, hint in HINTS.items()}


def _check_int(name, v, ge=None, gt=None, le=None):
    if v is None and OPTIONS.get(name) is not None and SamplingParams.__dataclass_fields__[name].default is None:
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidRequestError(f"{name} must be an integer, got {v!r}")
    if ge is not None and v < ge:
        raise InvalidRequestError(f"{name} must be >= {ge}, got {v}")
    if le is not None and v > le:
        raise InvalidRequestError(f"{name} must be in {ge}..{le}, got {v}")


def _check_range(name: str, v: float, opt: Option) -> None:
    b = opt.bounds
    lo_ok = (b.get("ge") is None or v >= b["ge"]) and (b.get("gt") is None or v > b["gt"])
    if lo_ok and (b.get("le") is None or v <= b["le"]):
        return
    if "le" in b:
        left = f"[{b['ge']}" if "ge" in b else f"({b['gt']}"
        allowed = f"in {left}, {b['le']}]"
    else:
        allowed = f">= {b['ge']}" if "ge" in b else f"> {b['gt']}"
    note = f" ({opt.note})" if opt.note else ""
    raise InvalidRequestError(f"{name} must be {allowed}{note}, got {v}")


def wire_fields(front_end: str) -> list[tuple[str, Any, Any, dict, str | None]]:
    """The request-body fields of ``front_end``, in declaration order: (name there, type, default, bounds,
    description). A default of ``list`` means an empty list per request; a None default makes the type optional."""
    out = []
    for name, opt in OPTIONS.items():
        wire = opt.front_ends.get(front_end)
        if wire is None:
            continue
        f = SamplingParams.__dataclass_fields__[name]
        engine_default = list if f.default is dataclasses.MISSING else f.default
        default = engine_default if wire.default is ENGINE else wire.default
        typ = opt.wire_type or HINTS[name]
        if default is None:
            typ = typ | None if type(None) not in typing.get_args(typ) else typ
        bounds = opt.bounds if wire.bounds is None else \
            {**{k: v for k, v in opt.bounds.items() if k not in ("ge", "gt")}, **wire.bounds}   # a lower bound of its own
        bounds = {**bounds, **(opt.wire_bounds or {})}
        out.append((wire.name or name, typ, default, bounds, wire.doc))
    return out


# ---- the command line -------------------------------------------------------------------------------------

def add_cli_flags(parser) -> None:
    """``--max-new-tokens``, ``--temperature``, ... for every option with a flag, in declaration order."""
    for name, opt in OPTIONS.items():
        if opt.flag is None:
            continue
        flag, kind = "--" + name.replace("_", "-"), KINDS[name]
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=opt.flag.help)
        elif kind is list:
            parser.add_argument(flag, action="append", default=opt.flag.default, help=opt.flag.help)
        else:
            parser.add_argument(flag, type=kind, default=opt.flag.default, help=opt.flag.help)


def from_cli_flags(args) -> dict:
    """The generate options of the parsed flags. Greedy unless a sampling flag is given: any of them means
    sampling (the others keep the engine's defaults). ``--temperature 0`` is greedy (SamplingParams.greedy),
    which the other sampling flags contradict: an InvalidRequestError names them."""
    options = {n: getattr(args, n) for n, o in OPTIONS.items() if o.flag is not None and not o.sampling_only}
    given = {n: getattr(args, n) for n in SAMPLING_ONLY if getattr(args, n) is not None}
    options["do_sample"] = bool(given)
    options.update(given)
    if given and SamplingParams(**options).greedy and len(given) > 1:
        others = ", ".join(f"--{n.replace('_', '-')}" for n in given if n != "temperature")
        one = len(given) == 2                 # --temperature and one other
        raise InvalidRequestError(f"--temperature 0 means greedy decoding, but {others} only "
                                  f"{'acts' if one else 'act'} when sampling: drop {'it' if one else 'them'}, or "
                                  "give a temperature > 0")
    return options


# ---- the Python API's warning -------------------------------------------------------------------------------

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
    several = len(given) > 1
    warnings.warn(f"{shown} only {'act' if several else 'acts'} when sampling, but do_sample is False, so decoding "
                  f"is greedy and {'they are' if several else 'it is'} ignored; pass do_sample=True to sample "
                  "(this warning is shown once)", UserWarning, stacklevel=3)


# the sampler's names, importable from here as before the sampler had its own module (torch is imported on use)
_SAMPLER_NAMES = ("Sampler", "SamplingRow", "TokenLogprob", "apply_penalties", "apply_top_k_top_p", "logprobs_of",
                  "token_logprobs")


def __getattr__(name: str):
    if name in _SAMPLER_NAMES:
        from . import sampler
        return getattr(sampler, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
