"""Request bodies of the HTTP API as pydantic models: the only place pydantic is imported.

Models are strict (no "5" for 5, no 1 for true) and forbid unknown fields, as OpenAI's API does, so a
typo in an option name is a 400 naming the field instead of a silently ignored setting. OpenAI fields we
accept but cannot honour (logit_bias, suffix, tools, ...) are declared so the error can say "not supported"
rather than "unknown field".
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["CompletionRequest", "ChatCompletionRequest", "ChatMessage", "DetokenizeRequest", "GenerateRequest",
           "MIIRequest", "StreamOptions", "TokenizeRequest", "ValidationError"]

INT64_MAX = 2 ** 63 - 1
MAX_LOGPROBS = 20          # as SamplingParams allows
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


class _OpenAISampling(_Strict):
    """Options common to /v1/completions and /v1/chat/completions (OpenAI names plus vLLM's extras)."""

    model: str | None = Field(None, description="the served model name (GET /v1/models); optional")
    temperature: float | None = Field(None, ge=0, description="absent: 1.0 (sampling, as OpenAI); 0: greedy")
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=MAX_N, description="choices per prompt (seeded: seed, seed+1, ...)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=INT64_MAX)
    user: str | None = Field(None, description="accepted and ignored")
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(None, description="not supported")
    # extras (vLLM's names)
    top_k: int | None = Field(None, ge=-1, description="0 or -1: no limit")
    min_tokens: int | None = Field(None, ge=0, description="EOS and stop tokens are banned before this many")
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    repetition_penalty: float | None = Field(None, gt=0, description="transformers'/vLLM's; 1: none")


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
    response_format: dict | None = Field(None, description="only {'type': 'text'} is supported")


class _Generate(_Strict):
    """The pipeline's generate options (fastgen_core.SamplingParams), pipeline defaults."""

    max_new_tokens: int | None = Field(None, ge=1, description="null: up to the model's context")
    min_new_tokens: int = Field(0, ge=0)
    do_sample: bool = False
    temperature: float = Field(1.0, ge=0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=INT64_MAX)
    stop: str | list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    return_full_text: bool = False
    repetition_penalty: float = Field(1.0, gt=0)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)


class GenerateRequest(_Generate):
    """POST /generate: fastgen's native endpoint, used by fastgen_core.client (pipeline semantics)."""

    prompts: Prompts
    stream: bool = Field(False, description="server-sent events of text pieces (one prompt only)")


class MIIRequest(_Strict):
    """POST /mii/{deployment_name}: DeepSpeed-MII's REST body, with MII's defaults (sampling, top_p 0.9)."""

    prompts: str | list[str]
    max_length: int | None = Field(None, ge=1, description="prompt + generated tokens; default: model context")
    max_new_tokens: int | None = Field(None, ge=1)
    min_new_tokens: int = Field(0, ge=0)
    do_sample: bool = True
    top_p: float = Field(0.9, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0)
    stop: str | list[str] = Field(default_factory=list)
    ignore_eos: bool = False
    return_full_text: bool = False
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
