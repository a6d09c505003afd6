"""A request-body limit that holds whatever way the body is sent.

`Content-Length` over the limit is refused at once; a chunked body (no length) is counted as it streams in and
refused the moment it passes the limit, so neither reaches the app, the JSON parser or the API-key check with more
than the limit in memory. A pure ASGI middleware: Starlette's BaseHTTPMiddleware would wrap `receive` and hide
client disconnects from `request.is_disconnected()`, which the waiting endpoints rely on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from servicekit.errors import too_large

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
WITH_BODY = ("POST", "PUT", "PATCH")


class BodyLimit:
    def __init__(self, app: Any, limit: int, setting: str) -> None:
        self.app, self.limit, self.setting = app, limit, setting

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WITH_BODY:
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await too_large(int(length), self.limit, self.setting).to_response()(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await too_large(None, self.limit, self.setting).to_response()(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for the app: the body read here, then the real channel (for disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
