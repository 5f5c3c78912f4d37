"""fastgen's native /generate (pipeline options and Response objects) and MII's POST /mii/{deployment}."""
from __future__ import annotations

from starlette.responses import JSONResponse, Response

from ..errors import APIError
from .openai_api import _collect, sse_response
from ...sampling import SamplingParams
from .options import completion_prompts, mii_prepare, render_chat, template_messages

MII_FINISH_REASONS = {"stop": "stop", "length": "length"}      # anything else is MII's "none"


async def generate(backend, body, request) -> Response:
    """Non-streaming: a JSON list of Response dicts. Streaming (one prompt): SSE events
    ``{"text", "token_ids"}``, the last one with ``"response"``, then ``[DONE]``."""
    prompts = completion_prompts(body.prompts)
    if body.stream and len(prompts) != 1:
        raise APIError(400, f"stream: true takes exactly one prompt, got {len(prompts)}", param="stream")
    params = SamplingParams.from_wire("native", body)     # the pipeline's options, with its defaults
    handle = await backend.open(request, lambda engine: [(p, c) for p in prompts for c in params.for_choices(1)],
                                len(prompts))
    if body.stream:
        return sse_response(handle, _generate_events(handle))
    responses = await _collect(handle)
    if responses is None:
        return Response(status_code=499)
    return JSONResponse([r.to_dict() for r in responses])


async def _generate_events(handle):
    async for out in handle.outputs():
        ev = {"text": out.delta_text, "token_ids": out.new_token_ids}
        if out.finished:
            ev["response"] = out.response.to_dict()
        yield ev


async def mii(backend, body, request) -> Response:
    """MII's REST answer: a list of {generated_text, prompt_length, generated_length, finish_reason}."""
    prompts, prepare = mii_prepare(body)
    handle = await backend.open(request, prepare, len(prompts))
    responses = await _collect(handle)
    if responses is None:
        return Response(status_code=499)
    return JSONResponse([{"generated_text": r.generated_text, "prompt_length": r.prompt_length,
                          "generated_length": r.generated_length,
                          "finish_reason": MII_FINISH_REASONS.get(r.finish_reason, "none")} for r in responses])


async def tokenize(backend, body, request) -> Response:
    """vLLM's answer: {"tokens", "count", "max_model_len"}; the prompt is not checked against the context."""
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "give exactly one of prompt (text) or messages (chat)", param="prompt")
    tok = _tokenizer(backend)
    if body.prompt is not None:
        ids = tok(body.prompt, add_special_tokens=body.add_special_tokens).input_ids
    else:
        ids = render_chat(tok, template_messages(body.messages), body.add_generation_prompt)
    return JSONResponse({"tokens": list(ids), "count": len(ids), "max_model_len": backend.info.max_context})


async def detokenize(backend, body, request) -> Response:
    tok = _tokenizer(backend)
    bad = [t for t in body.tokens if not 0 <= t < len(tok)]
    if bad:
        raise APIError(400, f"token ids must be in [0, {len(tok)}); got {bad[:5]}", param="tokens")
    return JSONResponse({"prompt": tok.decode(body.tokens)})


def _tokenizer(backend):
    from .openai_api import token_text                # the replica's own copy, not the engine thread's
    tok = token_text(backend).tokenizer
    if tok is None:
        raise APIError(400, "this model directory has no tokenizer files")
    return tok
