"""ASGI middlewares that bound and record every request before the app sees it.

`RequestBounds` counts body bytes as they arrive and answers 413 past the limit, and refuses JSON nested deeper than
a limit, both before anything is parsed: a 10 MB body used to be parsed whole (stalling /health) before the
history-length check applied. `AccessLog` gives each request an id (a sane incoming `X-Request-ID`, else a new one),
returns it as a header and writes one JSON line per request: method, path (no query string), status, duration and
client address, never a header, so keys and Authorization values cannot leak into logs.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from itertools import accumulate
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("recsys.access")

REQUEST_ID_HEADER = "x-request-id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# Strings first (they may hold brackets), then every bracket outside them.
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


async def send_error(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """An error in the app's one error body (`ErrorBody`), sent from outside the app."""
    body = json.dumps({"detail": detail, "errors": []}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def json_depth(body: bytes) -> int:
    """How deeply `body` nests arrays and objects, counted without parsing it (so without recursion)."""
    brackets = _JSON_BRACKET.findall(_JSON_STRING.sub(b'""', body))
    return max(accumulate(1 if b in (b"[", b"{") else -1 for b in brackets), default=0)


class RequestBounds:
    """Reads a request body up to `max_body_bytes` (413 beyond, whether or not Content-Length says so), checks JSON
    nesting (400 beyond `max_json_depth`), then replays the body to the app. `path_limits` gives paths whose bodies
    are larger by design (a batch of events) a limit of their own."""

    def __init__(self, app: App, max_body_bytes: int, max_json_depth: int, path_limits: Mapping[str, int] | None = None) -> None:
        self.app, self.max_body_bytes, self.max_json_depth = app, max_body_bytes, max_json_depth
        self.path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope["path"], self.max_body_bytes)
        too_large = f"request body larger than {limit} bytes"
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > limit:
            await send_error(send, 413, too_large, [(b"connection", b"close")])
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await send_error(send, 413, too_large, [(b"connection", b"close")])
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if json_depth(body) > self.max_json_depth:
            await send_error(send, 400, f"JSON nested deeper than {self.max_json_depth} levels")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class AccessLog:
    """One JSON line per request on the `recsys.access` logger, with the request id also returned as a header."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = incoming if _SANE_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started, status = time.perf_counter(), 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (REQUEST_ID_HEADER.encode(), request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_log.info(json.dumps({
                    "request_id": request_id, "method": scope["method"], "path": scope["path"], "status": status,
                    "ms": round(1000 * (time.perf_counter() - started), 3), "client": client[0] if client else None,
                }))  # fmt: skip
