"""OpenAI-compatible /v1/completions and /v1/chat/completions on a replica (JSON or server-sent events)."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

from starlette.responses import JSONResponse, Response, StreamingResponse

from .errors import APIError
from .options import chat_prepare, completion_prompts, openai_params, same_for_each


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def sse_response(handle, events) -> StreamingResponse:
    """Stream ``events`` (dicts) as SSE, then ``[DONE]``; always closes the handle (aborting leftovers)."""
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
            yield f"data: {_dumps(e.body())}\n\n"
        finally:
            handle.close()
    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _usage(responses) -> dict:
    p = sum(r.prompt_length for r in responses)
    c = sum(r.generated_length for r in responses)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def _collect(handle):
    try:
        return await handle.responses()
    finally:
        handle.close()


async def completions(backend, body, request) -> Response:
    prompts = completion_prompts(body.prompt)
    params = openai_params(body, body.max_tokens)
    handle = await backend.open(request, same_for_each(prompts, params), len(prompts))
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": backend.info.name}
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(handle, _completion_events(handle, head, usage))
    responses = await _collect(handle)
    if responses is None:
        return Response(status_code=499)
    choices = [{"index": i, "text": r.generated_text, "logprobs": None, "finish_reason": r.finish_reason}
               for i, r in enumerate(responses)]
    return JSONResponse({**head, "choices": choices, "usage": _usage(responses)})


async def _completion_events(handle, head, include_usage):
    finished = []
    async for out in handle.outputs():
        if out.finished:
            finished.append(out.response)
        elif not out.delta_text:
            continue
        yield {**head, "choices": [{"index": handle.index_of(out.request_id), "text": out.delta_text,
                                    "logprobs": None, "finish_reason": out.finish_reason}]}
    if include_usage and not handle.disconnected:
        yield {**head, "choices": [], "usage": _usage(finished)}


async def chat_completions(backend, body, request) -> Response:
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    params = openai_params(body, max_tokens)
    handle = await backend.open(request, chat_prepare(body.messages, params), 1)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": backend.info.name}
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(handle, _chat_events(handle, {**head, "object": "chat.completion.chunk"}, usage))
    responses = await _collect(handle)
    if responses is None:
        return Response(status_code=499)
    r = responses[0]
    choice = {"index": 0, "message": {"role": "assistant", "content": r.generated_text}, "logprobs": None,
              "finish_reason": r.finish_reason}
    return JSONResponse({**head, "choices": [choice], "usage": _usage(responses)})


async def _chat_events(handle, head, include_usage):
    def chunk(delta, reason=None):
        return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}
    yield chunk({"role": "assistant", "content": ""})
    final = None
    async for out in handle.outputs():
        if out.delta_text:
            yield chunk({"content": out.delta_text})
        if out.finished:
            final = out.response
            yield chunk({}, out.finish_reason)
    if include_usage and final is not None:
        yield {**head, "choices": [], "usage": _usage([final])}
