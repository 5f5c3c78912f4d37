"""HTTP errors as JSON in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Every refusal says what was wrong, with the value, and what is allowed; the server keeps serving.
"""
from __future__ import annotations

import logging

log = logging.getLogger("fastgen.server")

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
               503: "service_unavailable", 504: "timeout_error"}


class APIError(Exception):
    """An error answer: status code plus a message for people, and any headers it needs (``Retry-After``)."""

    def __init__(self, status: int, message: str, param: str | None = None, type: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type or ERROR_TYPES.get(status, "server_error")
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}}


def describe_validation_errors(errors) -> tuple[str, str | None]:
    """pydantic/FastAPI validation errors -> one readable message and the first offending field.

    A union (``content: str | list[TextPart]``) reports one error per member; they are described once, by
    the member whose shape the value had (``[]`` for text parts: "at least 1 item"), else as the list of
    the types allowed there."""
    groups: dict[tuple, list] = {}
    for e in errors:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        kind = e.get("type", "")
        if kind == "json_invalid":
            detail = (e.get("ctx") or {}).get("error", "")
            return f"the request body is not valid JSON: {detail}".rstrip(": "), None
        if kind == "missing" and not loc:
            return "the request needs a JSON object body", None
        cut = next((i for i, x in enumerate(loc) if _is_union_tag(x)), len(loc))
        groups.setdefault(tuple(loc[:cut]), []).append((loc[cut] if cut < len(loc) else None, loc, e))
    parts = []
    for where, items in groups.items():
        tags = list(dict.fromkeys(tag for tag, _, _ in items if tag))
        if len(tags) > 1:
            shaped = [(loc, e) for _, loc, e in items if not e.get("type", "").endswith("_type")]
            if not shaped:
                parts.append(f"{'.'.join(where) or 'body'}: must be one of these types: {', '.join(tags)} "
                             f"(got {_short(items[0][2].get('input'))})")
                continue
            items = [(None, *shaped[0])]
        for _, loc, e in items:
            parts.append(_describe(loc, e))
    first = next(iter(groups), ())
    return "; ".join(parts) or "invalid request", (first[0] if first else None)


def _describe(loc: list[str], e: dict) -> str:
    where = ".".join(x for x in loc if not _is_union_tag(x)) or "body"
    kind = e.get("type", "")
    if kind == "missing":
        return f"{where}: field required"
    if kind == "extra_forbidden":
        return f"{where}: unknown field (check the spelling; see /openapi.json for the allowed fields)"
    return f"{where}: {e.get('msg', 'invalid value')} (got {_short(e.get('input'))})"


def _is_union_tag(x: str) -> bool:
    return x in ("str", "int", "float", "bool") or x.startswith(("list[", "dict[", "function-"))


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."
