"""From HTTP request bodies to engine work: the prompts of each endpoint's body, chat messages through the
chat template, what this server refuses, and MII's ``max_length``.

An endpoint hands the engine loop a ``prepare(engine)`` function. It runs on the engine loop's thread (the
only thread that touches the engine or its tokenizer) and returns what to queue: ``(prompt, SamplingParams)``
pairs, or requests it already prepared with ``engine.prepare_request`` (when it had to tokenize the prompt
itself, so the prompt is tokenized once). The SamplingParams come straight from the body
(``SamplingParams.from_wire``: each front end's names, defaults and conversions; greedy is
SamplingParams.greedy), one per choice (``for_choices``).
OpenAI semantics (decided as vLLM does): ``temperature`` absent means 1.0, i.e. sampling, as on OpenAI's
API; ``temperature: 0`` is greedy. ``max_tokens`` defaults to 16 for completions (OpenAI's default) and
to "up to the context" for chat. ``n`` choices per prompt are n requests (with a seed, the i-th gets
seed + i, so seeded choices differ and are each reproducible); completions list them prompt by prompt.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

from ...errors import InvalidRequestError
from ...sampling import SamplingParams
from ..errors import APIError

Prepare = Callable[[Any], list[tuple[Any, SamplingParams]]]


def _unsupported(name: str, why: str) -> APIError:
    return APIError(400, f"{name} is not supported by this server: {why}", param=name)


def refuse_unsupported(body) -> None:
    """A 400 for what an OpenAI-style body asks and this server cannot do (named, with what is allowed)."""
    if body.logit_bias:
        raise _unsupported("logit_bias", "leave it empty")
    if getattr(body, "top_logprobs", None) is not None and not getattr(body, "logprobs", None):
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    if getattr(body, "best_of", None) not in (None, body.n or 1):
        raise _unsupported("best_of", f"got {body.best_of}; only best_of equal to n ({body.n or 1}) is allowed")
    if getattr(body, "suffix", None):
        raise _unsupported("suffix", "leave it null")
    if getattr(body, "tools", None):
        raise _unsupported("tools", "tool calling is not implemented")
    if getattr(body, "functions", None):
        raise _unsupported("functions", "tool calling is not implemented")
    for name in ("tool_choice", "function_call"):
        if getattr(body, name, None) not in (None, "none"):
            raise _unsupported(name, "only 'none' is allowed")
    modalities = getattr(body, "modalities", None)
    if modalities is not None and modalities != ["text"]:
        raise _unsupported("modalities", f"got {modalities!r}; only ['text'] is allowed (this server generates text)")
    for name, what in (("audio", "audio output"), ("prediction", "predicted outputs"),
                       ("web_search_options", "web search")):
        if getattr(body, name, None) is not None:
            raise _unsupported(name, f"this server has no {what}; leave it null")


GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}


def _response_format(fmt: dict) -> dict | None:
    """OpenAI's response_format as a structured_outputs spec (None for text)."""
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        js = fmt.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("schema", {}), dict):
            raise APIError(400, "response_format.json_schema must be an object with a name and a schema object, "
                                f"got {js!r}", param="response_format")
        return {"json": js.get("schema", {})}
    raise APIError(400, f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
                   param="response_format")


def structured_field(body) -> str:
    """The name a body gave its structured-outputs spec under (errors name it as the client spelt it)."""
    for name in ("response_format", *GUIDED):
        if getattr(body, name, None) is not None and (name != "response_format" or
                                                      body.response_format.get("type") != "text"):
            return name
    return "structured_outputs"


def structured_outputs(body) -> dict | None:
    """The structured_outputs spec of an OpenAI-style body, from whichever spelling it used: vLLM's
    structured_outputs, OpenAI's response_format, or vLLM's older guided_* fields. Two of them is a 400 naming
    both."""
    given = {}
    if body.structured_outputs is not None:
        given["structured_outputs"] = body.structured_outputs
    if body.response_format is not None:
        spec = _response_format(body.response_format)
        if spec is not None:
            given["response_format"] = spec
    for name, kind in GUIDED.items():
        value = getattr(body, name)
        if value is not None:
            given[name] = {kind: value}
    if len(given) > 1:
        names = list(given)
        raise APIError(400, f"{' and '.join(names)} both constrain the output: give only one of them",
                       param=names[0])
    if not given:
        return None
    name, spec = next(iter(given.items()))
    try:
        from ...structured import check_spec
        check_spec(spec, name)
    except InvalidRequestError as e:
        raise APIError(400, str(e), param=name) from None
    return spec


def openai_prepare(pairs: list, max_tokens_field: str, defaulted: bool = False,
                   spec_field: str = "structured_outputs") -> Prepare:
    """``prepare`` for OpenAI's endpoints: ``pairs`` of (prompt, [SamplingParams per choice]), each prompt
    tokenized once. A prompt that leaves no room for the tokens asked is refused in the request's own terms:
    ``max_tokens_field`` (max_tokens or max_completion_tokens, whichever the request used; ``defaulted``: it
    was not sent, its default applies) is named, and is the error's param. A structured-outputs spec the engine
    cannot compile is named ``spec_field``, as the request spelt it."""
    def prepare(engine):
        out = []
        for i, (prompt, choices) in enumerate(pairs):
            try:
                ids, text = engine.validate_prompt(prompt)
                asked, room = choices[0].max_new_tokens, engine.max_context - len(ids)
                if asked is not None and asked > room:
                    said = f"{max_tokens_field} ({asked}, the default)" if defaulted else \
                        f"{max_tokens_field} ({asked})"
                    raise InvalidRequestError(
                        f"prompt ({len(ids)} tokens) + {said} exceeds the model's context of {engine.max_context} "
                        f"tokens: give {max_tokens_field} <= {room} for this prompt, or a shorter prompt",
                        param=max_tokens_field)
                out += [dataclasses.replace(engine.prepare_request(ids, c), text=text) for c in choices]
            except InvalidRequestError as e:
                if e.param == "structured_outputs" and spec_field != e.param:
                    e = InvalidRequestError(re.sub(r"structured_outputs(\.\w+)?", spec_field, str(e), count=1),
                                            param=spec_field)
                if len(pairs) == 1:
                    raise e from None
                raise InvalidRequestError(f"prompt {i}: {e}", param=e.param) from None
        return out
    return prepare


def completion_prompts(prompt) -> list:
    """OpenAI's four prompt shapes -> a list of prompts (strings or token-id lists)."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise APIError(400, "prompt is an empty list; give a string, a token-id list, or a non-empty batch",
                       param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    return list(prompt)


def template_messages(messages) -> list[dict]:
    """Validated chat messages as chat templates read them: text parts joined, an assistant's null content ''."""
    out = []
    for m in messages:
        content = m.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        out.append({"role": m.role, "content": content or ""})
    return out


def render_chat(tok, msgs: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of ``msgs`` through the tokenizer's chat template. A template that refuses the messages
    (jinja's raise_exception, e.g. "roles must alternate") or cannot render them is a bad request."""
    if tok is None or not getattr(tok, "chat_template", None):
        raise InvalidRequestError("this model's tokenizer has no chat template; send a prompt to /v1/completions "
                                  "(or /tokenize) instead of messages")
    try:
        ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=add_generation_prompt,
                                      return_dict=False)
    except Exception as e:      # noqa: BLE001 - jinja2's TemplateError family, without importing jinja2
        if not any(c.__name__ == "TemplateError" for c in type(e).__mro__):
            raise
        raise InvalidRequestError(f"the model's chat template refused these messages: {e}") from None
    if hasattr(ids, "keys"):           # some tokenizers still answer a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def mii_prepare(body) -> tuple[list[str], Prepare]:
    """MII's generate options: do_sample True and top_p 0.9 by default; max_length caps prompt + new."""
    prompts = [body.prompts] if isinstance(body.prompts, str) else list(body.prompts)
    if not prompts:
        raise APIError(400, "prompts is an empty list; give at least one prompt", param="prompts")
    if body.stream:
        raise APIError(400, "stream is not supported on /mii (MII's REST API does not stream either); use "
                            "/v1/completions with stream: true or fastgen_core.client(...).generate(stream=True)",
                       param="stream")
    base = SamplingParams.from_wire("mii", body)

    def prepare(engine):
        if body.max_length is None:
            return [(p, dataclasses.replace(base)) for p in prompts]
        out = []
        for i, p in enumerate(prompts):
            try:
                out.append(_fit_max_length(engine, p, dataclasses.replace(base), body.max_length))
            except InvalidRequestError as e:
                raise InvalidRequestError(f"prompt {i}: {e}" if len(prompts) > 1 else str(e)) from None
        return out
    return prompts, prepare


def _fit_max_length(engine, prompt, params: SamplingParams, max_length: int):
    """max_new_tokens = max_length - prompt tokens. The prompt is tokenized here, once: the engine is
    given its token ids (checked without tokenizing again) and the text is kept for return_full_text."""
    ids, text = engine.validate_prompt(prompt)
    room = max_length - len(ids)
    if room < 1:
        raise InvalidRequestError(f"max_length ({max_length}) must be larger than the prompt ({len(ids)} tokens)")
    params.max_new_tokens = min(params.max_new_tokens or room, room)
    return dataclasses.replace(engine.prepare_request(ids, params), text=text)
