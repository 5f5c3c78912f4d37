"""HTTP errors as JSON in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Every refusal says what was wrong, with the value, and what is allowed; the server keeps serving.
"""
from __future__ import annotations

import logging

log = logging.getLogger("fastgen.server")

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
               503: "service_unavailable"}


class APIError(Exception):
    """An error answer: status code plus a message for people."""

    def __init__(self, status: int, message: str, param: str | None = None, type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type or ERROR_TYPES.get(status, "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}}


def describe_validation_errors(errors) -> tuple[str, str | None]:
    """pydantic/FastAPI validation errors -> one readable message and the first offending field."""
    errors = list(errors)
    locs = [[str(x) for x in e.get("loc", ()) if x != "body"] for e in errors]
    parts, first_param, seen = [], None, set()
    for e in errors:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        kind = e.get("type", "")
        if kind == "json_invalid":
            detail = (e.get("ctx") or {}).get("error", "")
            return f"the request body is not valid JSON: {detail}".rstrip(": "), None
        field = loc[0] if loc else None
        if kind == "missing" and not loc:
            return "the request needs a JSON object body", None
        if first_param is None:
            first_param = field
        if field in seen:       # a union reports one error per member: described once, below
            continue
        seen.add(field)
        where = ".".join(x for x in loc if not _is_union_tag(x)) or "body"
        got = e.get("input")
        members = [m[1] for m in locs if len(m) > 1 and m[0] == field and _is_union_tag(m[1])]
        if len(set(members)) > 1:
            allowed = ", ".join(dict.fromkeys(members))
            parts.append(f"{field}: must be one of these types: {allowed} (got {_short(got)})")
        elif kind == "missing":
            parts.append(f"{where}: field required")
        elif kind == "extra_forbidden":
            parts.append(f"{where}: unknown field (check the spelling; see /openapi.json for the allowed fields)")
        else:
            parts.append(f"{where}: {e.get('msg', 'invalid value')} (got {_short(got)})")
    return "; ".join(parts) or "invalid request", first_param


def _is_union_tag(x: str) -> bool:
    return x in ("str", "int", "float", "bool") or x.startswith(("list[", "dict[", "function-"))


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."
