"""What the engine hands back: a finished Response, and per-step RequestOutputs for streaming."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Response:
    """One finished request (the pipeline's and the client's answer)."""

    generated_text: str
    token_ids: list[int]
    prompt_length: int
    generated_length: int
    finish_reason: str            # "stop" | "length" | "abort"
    request_id: str = ""
    logits: list | None = field(default=None, repr=False)   # float32 tensors per sampled step (return_logits)
    logprobs: list | None = field(default=None, repr=False)  # a sampling.TokenLogprob per token (logprobs=k)
    prompt_logprobs: list | None = field(default=None, repr=False)  # per prompt token, None for the first
    prompt_token_ids: list | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"generated_text": self.generated_text, "token_ids": self.token_ids,
                "prompt_length": self.prompt_length, "generated_length": self.generated_length,
                "finish_reason": self.finish_reason}


@dataclass
class RequestOutput:
    """What one step produced for one request."""

    request_id: str
    new_token_ids: list[int]
    delta_text: str
    finished: bool
    finish_reason: str | None = None
    response: Response | None = None        # set when finished
    logprobs: list | None = None            # TokenLogprobs of new_token_ids (when the request asked)
