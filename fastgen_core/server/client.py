"""The Python client of a deployment (what ``fastgen_core.serve`` / ``fastgen_core.client`` return). It runs in
the caller's process and imports no torch (tests/server/test_server_layout.py checks it)."""
from __future__ import annotations

import json
import os
import time
from typing import Iterator
from urllib.parse import urlparse

import httpx

from ..engine.outputs import Response
from ..errors import FastgenError, InvalidRequestError


class ServerError(FastgenError):
    """The deployment refused or failed a request (``status`` is the HTTP status)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        message = resp.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = resp.text
    if resp.status_code in (400, 404, 422):
        raise InvalidRequestError(message)
    raise ServerError(resp.status_code, message)


class Client:
    """``generate(prompts, **options)`` takes the pipeline's options and returns its Response objects.

    The API key defaults to ``$FASTGEN_API_KEY``. ``openai_base_url`` is the URL to give the openai client.
    """

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600.0, process=None):
        self.url = url.rstrip("/")
        from ..config import api_key_from_env
        self.api_key = api_key if api_key is not None else api_key_from_env()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._process = process          # the front door, when this client started it

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    def generate(self, prompts, stream: bool = False, **options) -> list[Response] | Iterator[str]:
        """One prompt or many (strings or token-id lists) -> list[Response] in prompt order.

        ``stream=True`` (one prompt) returns an iterator of text pieces as they are generated. The options
        are the pipeline's: greedy unless ``do_sample=True`` (sampling options without it warn once).
        """
        from ..sampling import warn_unused_sampling_options
        payload = {"prompts": prompts, **options}
        if stream:
            pieces = self._stream(payload)
            warn_unused_sampling_options(options)       # once the server took the options
            return pieces
        resp = self._http.post("/generate", json=payload)
        _raise_for(resp)
        warn_unused_sampling_options(options)
        return [Response(**d) for d in resp.json()]

    __call__ = generate

    def _stream(self, payload) -> Iterator[str]:
        req = self._http.build_request("POST", "/generate", json={**payload, "stream": True})
        resp = self._http.send(req, stream=True)
        if resp.status_code >= 400:          # refused before streaming: raise now, not at the first next()
            resp.read()
            resp.close()
            _raise_for(resp)
        return self._events(resp)

    @staticmethod
    def _events(resp: httpx.Response) -> Iterator[str]:
        try:
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    raise ServerError(event["error"].get("code", 500), event["error"]["message"])
                if event["text"]:
                    yield event["text"]
        finally:
            resp.close()          # leaving early closes the connection: the server aborts the request

    # ---- operations ----------------------------------------------------------------------------
    def health(self) -> bool:
        try:
            return self._http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def stats(self) -> dict:
        resp = self._http.get("/fastgen/stats")
        _raise_for(resp)
        return resp.json()

    def deployment(self) -> dict:
        resp = self._http.get("/fastgen/deployment")
        _raise_for(resp)
        return resp.json()

    def terminate(self, timeout: float = 600.0) -> None:
        """Drain in-flight requests and stop every process of the deployment; returns once they are gone."""
        info = self.deployment()
        pids = [info["pid"]] + [r["pid"] for r in info["replicas"] if r["pid"]]
        _raise_for(self._http.post("/fastgen/terminate"))
        self._http.close()
        deadline = time.monotonic() + timeout
        if self._process is not None:
            self._process.wait(timeout)
        local = urlparse(self.url).hostname in ("127.0.0.1", "localhost", "::1")
        while local and any(pid_alive(p) for p in pids):
            if time.monotonic() > deadline:
                raise ServerError(504, f"processes {[p for p in pids if pid_alive(p)]} still run after {timeout}s")
            time.sleep(0.05)

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def pid_alive(pid: int) -> bool:
    """True while the process runs (a zombie, exited but not yet reaped by its parent, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
