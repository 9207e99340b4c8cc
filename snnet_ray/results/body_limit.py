"""A request body limit enforced while the body streams in, before anything parses it.

FastAPI reads a whole body and then parses it, so a list-length check in a route comes after a
20 MB body has been read and turned into objects. `BodyLimit` is a plain ASGI middleware in front
of the app: a `Content-Length` over the limit is answered 413 at once, and a body sent without one
(chunked) is counted as it arrives and refused with 413 the moment it passes the limit. Bodies
within the limit are handed on unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["BodyLimit"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: HTTP request bodies of at most `max_bytes`, else 413 with a JSON `detail`."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and (length < 0 or length > self.max_bytes):
            await self._refuse(send, length)
            return
        # Read the body here, with the cap, and replay it to the app.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send, None)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as ASGI servers do

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, length: int | None) -> None:
        sent = f"{length} bytes" if length is not None else "more"
        detail = (f"request body of {sent} is over the limit of {self.max_bytes} bytes: "
                  "send fewer records per request")
        body = json.dumps({"detail": detail}).encode()
        await send({
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return None
