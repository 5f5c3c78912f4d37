"""Request bodies of the HTTP API as pydantic models: the only place pydantic is imported.

The generate options of each body are not declared here: they come from their one declaration,
fastgen_core.sampling.SamplingParams (``wire_fields``: each front end's names, defaults and bounds).
Models are strict (no "5" for 5, no 1 for true) and forbid unknown fields, as OpenAI's API does, so a
typo in an option name is a 400 naming the field instead of a silently ignored setting. Every field of OpenAI's
request bodies is declared, so none is answered "unknown field": those that cannot change what this server
generates (metadata, store, user, service_tier, ...) are accepted and ignored, as vLLM does; those it cannot
honour (logit_bias, suffix, tools, prediction, audio, ...) are refused with a 400 that says "not supported"
(replica/options.py's refuse_unsupported).
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from ..sampling import MAX_LOGPROBS, wire_fields

__all__ = ["CompletionRequest", "ChatCompletionRequest", "ChatMessage", "DetokenizeRequest", "GenerateRequest",
           "MIIRequest", "StreamOptions", "TokenizeRequest", "ValidationError"]

MAX_N = 128
TokenIds = list[int]
# OpenAI's completions prompt: a string, a batch of strings, one token-id list or a batch of them
Prompt = Union[str, list[str], TokenIds, list[TokenIds]]
# the pipeline's: one prompt (text or token ids) or a list mixing both
Prompts = Union[str, TokenIds, list[Union[str, TokenIds]]]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False
    include_obfuscation: bool = Field(True, description="accepted and ignored (no obfuscation padding is sent)")


def _options(front_end: str) -> dict:
    """The generate options of ``front_end`` as pydantic fields, from their one declaration (SamplingParams)."""
    fields = {}
    for name, typ, default, bounds, doc in wire_fields(front_end):
        if default is list:
            fields[name] = (typ, Field(default_factory=list, description=doc, **bounds))
        else:
            fields[name] = (typ, Field(default, description=doc, **bounds))
    return fields


class _OpenAIRequest(_Strict):
    """Fields common to /v1/completions and /v1/chat/completions besides the generate options."""

    model: str | None = Field(None, description="the served model name (GET /v1/models); optional")
    n: int | None = Field(None, ge=1, le=MAX_N, description="choices per prompt (seeded: seed, seed+1, ...)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = Field(None, description="not supported")
    # OpenAI's bookkeeping and routing hints: nothing a self-hosted engine generates differently for
    user: str | None = Field(None, description="accepted and ignored")
    metadata: dict[str, str] | None = Field(None, description="accepted and ignored")
    store: bool | None = Field(None, description="accepted and ignored (nothing is stored)")
    service_tier: str | None = Field(None, description="accepted and ignored")
    safety_identifier: str | None = Field(None, description="accepted and ignored")
    prompt_cache_key: str | None = Field(None, description="accepted and ignored (the prefix cache needs no key)")
    # structured outputs (besides vLLM's structured_outputs, a generate option): OpenAI's and vLLM's older names
    response_format: dict | None = Field(None, description="{'type': 'text'}, {'type': 'json_object'} or "
                                         "{'type': 'json_schema', 'json_schema': {'name', 'schema', 'strict'}}")
    guided_json: dict | str | None = Field(None, description="vLLM's older name for structured_outputs.json")
    guided_regex: str | None = Field(None, description="vLLM's older name for structured_outputs.regex")
    guided_choice: list[str] | None = Field(None, description="vLLM's older name for structured_outputs.choice")
    guided_grammar: str | None = Field(None, description="vLLM's older name for structured_outputs.grammar")


# the generate options under OpenAI's names plus vLLM's extras (top_k, min_tokens, ignore_eos, ...), each optional
_OpenAISampling = create_model("_OpenAISampling", __base__=_OpenAIRequest, **_options("openai"))


class CompletionRequest(_OpenAISampling):
    """POST /v1/completions."""

    prompt: Prompt = Field(description="a string, a list of strings, a token-id list, or a list of those")
    max_tokens: int | None = Field(16, ge=1, description="default 16, as OpenAI; null: up to the context")
    echo: bool = Field(False, description="the prompt before the completion (and its logprobs with logprobs)")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="each token's logprob and this many "
                                 "most likely alternatives")
    best_of: int | None = Field(None, ge=1, description="only equal to n (or absent) is supported")
    suffix: str | None = Field(None, description="not supported")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


# OpenAI's message shapes, told apart by role: system, developer, user and tool messages need content
# (a string or text parts); an assistant's may be null or absent (OpenAI: when it made tool calls)
Content = Union[str, Annotated[list[TextPart], Field(min_length=1)]]


class SystemMessage(_Strict):
    role: Literal["system"]
    content: Content
    name: str | None = None


class DeveloperMessage(_Strict):
    role: Literal["developer"]
    content: Content
    name: str | None = None


class UserMessage(_Strict):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(_Strict):
    role: Literal["assistant"]
    content: Content | None = None
    name: str | None = None
    refusal: str | None = None


class ToolMessage(_Strict):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


ChatMessage = Annotated[Union[SystemMessage, DeveloperMessage, UserMessage, AssistantMessage, ToolMessage],
                        Field(discriminator="role")]


class ChatCompletionRequest(_OpenAISampling):
    """POST /v1/chat/completions (the prompt is built with the tokenizer's chat template)."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="default: up to the model's context")
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens")
    logprobs: bool | None = Field(None, description="each output token's logprob")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="with logprobs: this many "
                                     "most likely alternatives per token")
    tools: list[dict] | None = Field(None, description="not supported")
    tool_choice: str | dict | None = Field(None, description="only 'none' is supported")
    parallel_tool_calls: bool | None = Field(None, description="accepted and ignored (no tools are called)")
    functions: list[dict] | None = Field(None, description="not supported (tools' older name)")
    function_call: str | dict | None = Field(None, description="only 'none' is supported (tool_choice's older "
                                                                "name)")
    reasoning_effort: str | None = Field(None, description="accepted and ignored (for reasoning models)")
    verbosity: str | None = Field(None, description="accepted and ignored")
    modalities: list[str] | None = Field(None, description="only ['text'] is supported")
    audio: dict | None = Field(None, description="not supported (audio output)")
    prediction: dict | None = Field(None, description="not supported (predicted outputs)")
    web_search_options: dict | None = Field(None, description="not supported (web search)")


# the pipeline's generate options (SamplingParams) with the pipeline's defaults
_Generate = create_model("_Generate", __base__=_Strict, **_options("native"))


class GenerateRequest(_Generate):
    """POST /generate: fastgen's native endpoint, used by fastgen_core.client (pipeline semantics)."""

    prompts: Prompts
    stream: bool = Field(False, description="server-sent events of text pieces (one prompt only)")


class MIIRequest(create_model("_MIIOptions", __base__=_Strict, **_options("mii"))):
    """POST /mii/{deployment_name}: DeepSpeed-MII's REST body, with MII's defaults (sampling, top_p 0.9)."""

    prompts: str | list[str]
    max_length: int | None = Field(None, ge=1, description="prompt + generated tokens; default: model context")
    stream: bool = Field(False, description="not supported over REST (as in MII)")


class TokenizeRequest(_Strict):
    """POST /tokenize (vLLM's): a prompt, or chat messages rendered with the chat template, to token ids."""

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(_Strict):
    """POST /detokenize (vLLM's): token ids to text."""

    model: str | None = None
    tokens: TokenIds
