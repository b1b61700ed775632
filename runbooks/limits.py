"""What the webhook accepts at most: body size, JSON nesting and request rate.

``BodyLimit`` is a plain ASGI middleware: a request whose ``Content-Length``
exceeds ``RUNBOOK_MAX_BODY_BYTES`` is answered 413 before a byte of its body is
read; a chunked body is read up to the limit, then refused the same way. A request
within the limit reaches the routes with its body already buffered (the routes
read it whole anyway: signatures cover the raw bytes).

``parse_json`` turns a body into Python values or raises ``BadBody`` with the
status to answer: 400 for malformed JSON, 422 for JSON nested deeper than
``MAX_DEPTH`` (Python's parser would otherwise hit its recursion limit and the
request would end in a 500).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: containers inside containers a body may hold (an Alertmanager payload needs 4)
MAX_DEPTH = 32


class BadBody(ValueError):
    """A body refused before validation; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _too_deep(value: Any, limit: int) -> bool:
    """True if containers nest deeper than ``limit`` (only containers are visited)."""
    if not isinstance(value, (dict, list)):
        return False
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, (dict, list)):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def parse_json(body: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of ``body``; ``BadBody`` (400 or 422) when it cannot be used."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise BadBody(422, f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # also bad UTF-8
        raise BadBody(400, f"malformed JSON: {exc}") from None
    if _too_deep(value, max_depth):
        raise BadBody(422, f"JSON nested deeper than {max_depth} levels")
    return value


async def _send_413(send: Send, limit: int) -> None:
    body = json.dumps({"error": f"request body larger than {limit} bytes"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 (see the module doc)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared > self.max_bytes:
                await _send_413(send, self.max_bytes)
                return
        if scope["method"] in ("GET", "HEAD", "OPTIONS") and length is None:
            await self.app(scope, receive, send)  # no body: nothing to buffer (e.g. SSE)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _send_413(send, self.max_bytes)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        buffered: list[Message] = [{"type": "http.request", "body": b"".join(chunks)}]

        async def replay() -> Message:
            if buffered:
                return buffered.pop()
            return await receive()  # after the body: wait for the disconnect

        await self.app(scope, replay, send)


class RateLimiter:
    """A token bucket: ``rate`` requests per second, bursts of ``2 × rate``."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(2 * rate, 1.0)
        self.tokens = self.capacity
        self.at = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> float:
        """0 if allowed, else seconds to wait."""
        with self._lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens >= 1:
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate
