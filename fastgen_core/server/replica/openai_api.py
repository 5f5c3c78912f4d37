"""OpenAI-compatible /v1/completions and /v1/chat/completions on a replica (JSON or server-sent events)."""
from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid

from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import APIError
from ...sampling import SamplingParams
from .options import (completion_prompts, openai_prepare, refuse_unsupported, render_chat, structured_field,
                      structured_outputs, template_messages)


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def sse_response(handle, events) -> StreamingResponse:
    """Stream ``events`` (dicts) as SSE, then ``[DONE]``; always closes the handle (aborting leftovers). An error
    once the stream has started (a deadline passed, the engine loop died) is an error event, then ``[DONE]``."""
    async def body():
        try:
            async for ev in events:
                yield f"data: {_dumps(ev)}\n\n"
                if handle.backlogged:
                    # Events that piled up would go out back to back in one step of the event loop: if the client
                    # has just left, asyncio learns so only after that step and warns about every write past the
                    # fifth ("socket.send() raised exception."). One pass of the loop between writes lets the
                    # server mark the connection lost first, and its sends stop at once.
                    await asyncio.sleep(0)
            if not handle.disconnected:
                yield "data: [DONE]\n\n"
        except APIError as e:           # headers are gone already: report in-band, as OpenAI does
            yield f"data: {_dumps(e.body())}\n\ndata: [DONE]\n\n"
        finally:
            handle.close()
    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _usage(responses, n: int = 1) -> dict:
    """OpenAI's usage: each prompt counted once however many choices (``n``) it has."""
    p = sum(r.prompt_length for r in responses[::n])
    c = sum(r.generated_length for r in responses)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def _collect(handle):
    try:
        return await handle.responses()
    finally:
        handle.close()


class TokenText:
    """Token id -> the text it decodes to (OpenAI's per-token strings), cached; ``token_id:N`` without a
    tokenizer (vLLM's spelling)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, token_id: int) -> str:
        text = self.cache.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id]) if self.tokenizer is not None else f"token_id:{token_id}"
            self.cache[token_id] = text
        return text


def token_text(backend) -> TokenText:
    """The replica's TokenText, over its own copy of the tokenizer: the engine thread encodes with the
    engine's, and a Rust tokenizer used from two threads can refuse a borrow ("Already borrowed")."""
    cached = getattr(backend, "_token_text", None)
    if cached is None:
        tok = backend.loop.engine.tokenizer
        cached = backend._token_text = TokenText(copy.deepcopy(tok) if tok is not None else None)
    return cached


def completion_logprobs(pairs, text_of: TokenText, offset: int = 0) -> dict:
    """The legacy completions ``logprobs`` object for (token id, TokenLogprob or None) pairs: None for a
    prompt's first token, which nothing predicts. ``top_logprobs`` holds the alternatives and the chosen
    token, as vLLM's does."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for token_id, tl in pairs:
        t = text_of(token_id)
        out["tokens"].append(t)
        out["text_offset"].append(offset)
        offset += len(t)
        out["token_logprobs"].append(None if tl is None else tl.logprob)
        out["top_logprobs"].append(None if tl is None else
                                   {**{text_of(i): v for i, v in tl.top}, t: tl.logprob})
    return out


def chat_logprobs(tls, text_of: TokenText) -> dict:
    """The chat ``logprobs`` object: per token its text, logprob, UTF-8 bytes and the top alternatives."""
    def entry(token_id, logprob):
        t = text_of(token_id)
        return {"token": t, "logprob": logprob, "bytes": list(t.encode("utf-8"))}
    return {"content": [{**entry(tl.token_id, tl.logprob), "top_logprobs": [entry(i, v) for i, v in tl.top]}
                        for tl in tls]}


async def completions(backend, body, request) -> Response:
    prompts = completion_prompts(body.prompt)
    n = body.n or 1
    if body.stream and body.echo and body.logprobs is not None:
        raise APIError(400, "echo with logprobs (the prompt's logprobs) is answered without stream; drop one of "
                            "stream, echo or logprobs", param="echo")
    refuse_unsupported(body)
    params = SamplingParams.from_wire("openai", body, max_new_tokens=body.max_tokens, logprobs=body.logprobs,
                                      prompt_logprobs=body.logprobs if body.echo else None, return_full_text=body.echo,
                                      structured_outputs=structured_outputs(body))
    # each prompt n times, prompt-major, as OpenAI orders the choices
    prepare = openai_prepare([(p, params.for_choices(n)) for p in prompts], "max_tokens",
                             defaulted="max_tokens" not in body.model_fields_set, spec_field=structured_field(body))
    handle = await backend.open(request, prepare, len(prompts) * n)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": backend.info.name}
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        echo = None
        if body.echo:                 # the prompts' text, each once per choice
            tok = token_text(backend).tokenizer
            echo = [p if isinstance(p, str) else (tok.decode(p, skip_special_tokens=True) if tok is not None else "")
                    for p in prompts for _ in range(n)]
        return sse_response(handle, _completion_events(handle, head, usage, n, echo, token_text(backend)))
    responses = await _collect(handle)
    if responses is None:
        return Response(status_code=499)
    text_of = token_text(backend) if body.logprobs is not None else None
    choices = []
    for i, r in enumerate(responses):
        lp = None
        if text_of is not None:
            pairs = list(zip(r.token_ids, r.logprobs))
            if body.echo:
                pairs = list(zip(r.prompt_token_ids, r.prompt_logprobs)) + pairs
            lp = completion_logprobs(pairs, text_of)
        choices.append({"index": i, "text": r.generated_text, "logprobs": lp, "finish_reason": r.finish_reason})
    return JSONResponse({**head, "choices": choices, "usage": _usage(responses, n)})


async def _completion_events(handle, head, include_usage, n, echo, text_of):
    finished = []
    pending: dict[str, list] = {}          # logprobs of tokens whose text has not gone out yet
    offsets: dict[str, int] = {}
    started: set[str] = set()
    async for out in handle.outputs():
        index = handle.index_of(out.request_id)
        if echo is not None and out.request_id not in started:     # the prompt first, as its own chunk
            started.add(out.request_id)
            text = echo[index]
            offsets[out.request_id] = len(text)
            yield {**head, "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": None}]}
        if out.logprobs:
            pending.setdefault(out.request_id, []).extend(out.logprobs)
        if out.finished:
            finished.append(out.response)
        elif not out.delta_text:
            continue
        lp = None
        if out.request_id in pending:
            tls = pending.pop(out.request_id)
            lp = completion_logprobs([(t.token_id, t) for t in tls], text_of, offsets.get(out.request_id, 0))
        offsets[out.request_id] = offsets.get(out.request_id, 0) + len(out.delta_text)
        yield {**head, "choices": [{"index": index, "text": out.delta_text, "logprobs": lp,
                                    "finish_reason": out.finish_reason}]}
    if include_usage and not handle.disconnected:
        finished.sort(key=lambda r: handle.index_of(r.request_id))
        yield {**head, "choices": [], "usage": _usage(finished, n)}


async def chat_completions(backend, body, request) -> Response:
    field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens = getattr(body, field)
    n = body.n or 1
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    refuse_unsupported(body)
    params = SamplingParams.from_wire("openai", body, max_new_tokens=max_tokens, logprobs=logprobs,
                                      structured_outputs=structured_outputs(body))
    msgs = template_messages(body.messages)

    def prepare(engine):          # the chat template is rendered on the engine's thread, with its tokenizer
        return openai_prepare([(render_chat(engine.tokenizer, msgs), params.for_choices(n))], field,
                              spec_field=structured_field(body))(engine)
    handle = await backend.open(request, prepare, n)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": backend.info.name}
    text_of = token_text(backend) if logprobs is not None else None
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(handle, _chat_events(handle, {**head, "object": "chat.completion.chunk"}, usage, n,
                                                 text_of))
    responses = await _collect(handle)
    if responses is None:
        return Response(status_code=499)
    choices = [{"index": i, "message": {"role": "assistant", "content": r.generated_text},
                "logprobs": chat_logprobs(r.logprobs, text_of) if text_of is not None else None,
                "finish_reason": r.finish_reason} for i, r in enumerate(responses)]
    return JSONResponse({**head, "choices": choices, "usage": _usage(responses, n)})


async def _chat_events(handle, head, include_usage, n, text_of):
    def chunk(index, delta, reason=None, tls=None):
        lp = chat_logprobs(tls, text_of) if tls else None
        return {**head, "choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": reason}]}
    for i in range(n):
        yield chunk(i, {"role": "assistant", "content": ""})
    finished = []
    pending: dict[str, list] = {}
    async for out in handle.outputs():
        index = handle.index_of(out.request_id)
        if out.logprobs:
            pending.setdefault(out.request_id, []).extend(out.logprobs)
        if out.delta_text:
            yield chunk(index, {"content": out.delta_text}, tls=pending.pop(out.request_id, None))
        if out.finished:
            finished.append(out.response)
            yield chunk(index, {}, out.finish_reason, tls=pending.pop(out.request_id, None))
    if include_usage and len(finished) == n:
        yield {**head, "choices": [], "usage": _usage(finished, n)}
