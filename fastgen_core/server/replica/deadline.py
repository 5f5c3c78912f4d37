"""Request deadlines: the ``X-Request-Timeout`` header and ``--request-timeout``, the smaller of the two applying.

A request not finished by its deadline, waiting or running, is aborted in the engine (its KV blocks freed at once)
and answered 504, or, once a stream has started, with an error event and ``data: [DONE]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import APIError

HEADER = "X-Request-Timeout"
MAX_TIMEOUT_S = 86400.0          # a day: anything longer is a typo (milliseconds?), not a deadline


@dataclass(frozen=True)
class Deadline:
    seconds: float
    source: str                  # what set it, as the client or the operator wrote it

    def message(self, generated: bool) -> str:
        where = ("while generating" if generated else
                 "before its first token (it was waiting for a slot in the running batch, or prefilling)")
        return (f"the request did not finish within its deadline of {self.seconds:g}s ({self.source}): it was "
                f"stopped {where}. Ask for fewer tokens, or for more time with a larger {HEADER} (the server's "
                "--request-timeout, if set, caps it)")


def parse_timeout(value: str) -> float:
    """The header's seconds; a 400 naming the header and what it allows for anything else."""
    try:
        seconds = float(value.strip())
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_TIMEOUT_S:          # NaN and inf fail here too
        raise APIError(400, f"{HEADER}: must be a number of seconds greater than 0 and at most {MAX_TIMEOUT_S:g} "
                            f"(e.g. 30 or 2.5), got {value!r}", param=HEADER)
    return seconds


def deadline_of(request, server_timeout_s: float | None) -> Deadline | None:
    """The deadline for this request: the header's, the server's, or the smaller of both (None: no deadline)."""
    value = request.headers.get(HEADER)
    asked = parse_timeout(value) if value is not None else None
    if asked is not None and (server_timeout_s is None or asked <= server_timeout_s):
        return Deadline(asked, f"{HEADER}: {value.strip()}")
    if server_timeout_s is not None:
        return Deadline(server_timeout_s, f"the server's --request-timeout {server_timeout_s:g}")
    return None
