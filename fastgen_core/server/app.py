"""The FastAPI application, the same for the front door and for each replica (so both publish the same
OpenAPI schema and validate the same way); only the backend differs:

- replica.local.LocalBackend (a replica): the engine loop runs in this process;
- frontdoor.router.RouterBackend (the front door): forwards each validated request to the least-busy replica.
"""
from __future__ import annotations

import inspect
import logging
import os
import secrets
import signal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from ..errors import InvalidRequestError
from .errors import APIError, describe_validation_errors
from .protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest, GenerateRequest, MIIRequest,
                       TokenizeRequest)

log = logging.getLogger("fastgen.server")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"      # Prometheus' text exposition
PUBLIC_PATHS = ("/health", "/ready", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")


async def _resolve(value):
    return await value if inspect.isawaitable(value) else value


class APIKeyMiddleware:
    """401 unless ``Authorization: Bearer <key>`` (health, readiness, metrics and the schema stay public)."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.api_key = api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS:
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if not header:
                err = APIError(401, "missing API key: send the header 'Authorization: Bearer <key>'")
            elif scheme.lower() != b"bearer" or not secrets.compare_digest(token.strip(), self.api_key):
                err = APIError(401, "wrong API key (expected 'Authorization: Bearer <key>' with the server's key)")
            else:
                err = None
            if err is not None:
                log_rejection(scope["method"], scope["path"], err)
                resp = JSONResponse(err.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


class JSONBodyMiddleware:
    """Every POST body here is JSON: read it as JSON whatever Content-Type says (``curl -d`` sends
    application/x-www-form-urlencoded, which FastAPI would not parse)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": headers + [(b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


def log_rejection(method: str, path: str, err: APIError) -> None:
    """One line per request refused for what it asked (4xx): what was wrong, never a traceback. A client that
    left (499) was not refused."""
    if 400 <= err.status < 500 and err.status != 499:
        log.warning("rejected %s %s (%d): %s", method, path, err.status, err.message)


def _answer(request, err: APIError) -> JSONResponse:
    log_rejection(request.method, request.url.path, err)
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def create_app(backend, name: str, model_path: str, api_key: str | None = None, lifespan=None) -> FastAPI:
    app = FastAPI(title="fastgen", version=_version(), lifespan=lifespan,
                  description="OpenAI- and DeepSpeed-MII-compatible text generation (see docs/serving.md).")
    app.state.backend = backend
    served = {name, model_path, os.path.basename(os.path.normpath(model_path))}
    app.add_middleware(JSONBodyMiddleware)
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)

    def check_model(model: str | None) -> None:
        if model is not None and model not in served:
            raise APIError(404, f"model {model!r} is not served here; this deployment serves {name!r} "
                                "(see GET /v1/models)", param="model")

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return _answer(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        return _answer(request, APIError(400, *describe_validation_errors(exc.errors())))

    @app.exception_handler(InvalidRequestError)
    async def _invalid_request(request, exc):
        return _answer(request, APIError(400, str(exc), param=exc.param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        msg = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return _answer(request, APIError(exc.status_code, msg))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):
        log.exception("unhandled error on %s", request.url.path)
        body = APIError(500, f"internal error: {type(exc).__name__}: {exc}").body()
        return JSONResponse(body, status_code=500)

    @app.post("/v1/completions", tags=["openai"])
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model)
        return await backend.handle("completions", body, request, "/v1/completions")

    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_model(body.model)
        return await backend.handle("chat", body, request, "/v1/chat/completions")

    @app.get("/v1/models", tags=["openai"])
    async def models():
        return await _resolve(backend.models())

    @app.post("/mii/{deployment_name}", tags=["mii"])
    async def mii(deployment_name: str, body: MIIRequest, request: Request):
        if deployment_name != name:
            raise APIError(404, f"no deployment {deployment_name!r} here; this server's deployment is {name!r} "
                                f"(POST /mii/{name})")
        return await backend.handle("mii", body, request, f"/mii/{deployment_name}")

    @app.post("/generate", tags=["fastgen"])
    async def generate(body: GenerateRequest, request: Request):
        """The pipeline's options and Response objects (used by fastgen_core.client)."""
        return await backend.handle("generate", body, request, "/generate")

    @app.post("/tokenize", tags=["fastgen"])
    async def tokenize(body: TokenizeRequest, request: Request):
        """A prompt or chat messages to the model's token ids (vLLM's /tokenize)."""
        check_model(body.model)
        return await backend.handle("tokenize", body, request, "/tokenize")

    @app.post("/detokenize", tags=["fastgen"])
    async def detokenize(body: DetokenizeRequest, request: Request):
        """Token ids to text (vLLM's /detokenize)."""
        check_model(body.model)
        return await backend.handle("detokenize", body, request, "/detokenize")

    @app.get("/health", tags=["ops"])
    async def health():
        """200 while every engine loop is alive and stepping; 503 otherwise."""
        ok, detail = await _resolve(backend.health())
        return JSONResponse(detail, status_code=200 if ok else 503)

    @app.get("/ready", tags=["ops"])
    async def ready():
        """200 while new requests are taken; 503 while draining (after SIGTERM) or while no replica is up."""
        ok, detail = await _resolve(backend.ready())
        return JSONResponse(detail, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"])
    async def metrics():
        return Response(await _resolve(backend.metrics()), media_type=CONTENT_TYPE)

    @app.get("/fastgen/stats", tags=["ops"])
    async def stats():
        """engine.stats() of every replica (KV usage, running/waiting, counters) plus routing state."""
        return await _resolve(backend.stats())

    @app.get("/fastgen/deployment", tags=["ops"])
    async def deployment():
        """Name, model and the process ids of the deployment."""
        return await _resolve(backend.deployment())

    @app.post("/fastgen/terminate", tags=["ops"])
    async def terminate():
        """Drain in-flight requests, then stop every process of the deployment (as SIGTERM does)."""
        return JSONResponse({"status": "terminating", "pid": os.getpid()}, status_code=202,
                            background=BackgroundTask(os.kill, os.getpid(), signal.SIGTERM))

    return app


def _version() -> str:
    from .. import __version__
    return __version__
