"""Request header limits: 431 for oversized headers, never a connection reset.

Two layers, because uvicorn's HTTP parser (h11) sees the bytes in the chunks the
socket delivers. Headers that arrive in one piece reach the application, and the
ASGI middleware refuses them when they add up to more than ``MAX_HEADER_BYTES``.
Headers that keep arriving past h11's buffer limit (the same ``MAX_HEADER_BYTES``)
never become a request: uvicorn would answer 400 and close the socket while the
client was still sending, so the kernel reset the connection before the client
read anything. ``HeaderLimitProtocol`` answers 431 instead, shuts its side down
and reads (and drops) what the client still sends before it closes.
"""

from __future__ import annotations

import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["MAX_HEADER_BYTES", "HeaderLimitMiddleware", "HeaderLimitProtocol"]

MAX_HEADER_BYTES = 16 * 1024
# After a 431, read at most this much (or for this long) of what the client still
# sends, so our close does not turn into a reset that hides the answer.
DRAIN_BYTES = 1024 * 1024
DRAIN_SECONDS = 2.0

_DETAIL = f"request headers exceed {MAX_HEADER_BYTES} bytes"
_BODY = json.dumps({"error": "request_header_fields_too_large", "detail": _DETAIL}).encode()


class HeaderLimitMiddleware:
    """ASGI middleware: 431 when a request's header names and values exceed the limit."""

    def __init__(self, app: Any, max_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and _header_bytes(scope) > self.max_bytes:
            await send({
                "type": "http.response.start",
                "status": 431,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(_BODY)).encode())],
            })  # fmt: skip
            await send({"type": "http.response.body", "body": _BODY})
            return
        await self.app(scope, receive, send)


def _header_bytes(scope: dict[str, Any]) -> int:
    return sum(len(name) + len(value) for name, value in scope.get("headers", ()))


class _Connection(h11.Connection):
    """An ``h11.Connection`` that remembers why it refused a request."""

    refused: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.refused = exc
            raise


class HeaderLimitProtocol(H11Protocol):
    """uvicorn's h11 protocol, answering 431 (with a lingering close) for oversized headers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limit = self.config.h11_max_incomplete_event_size or MAX_HEADER_BYTES
        self.conn = _Connection(h11.SERVER, limit)
        self._drained: int | None = None

    def data_received(self, data: bytes) -> None:
        if self._drained is None:
            super().data_received(data)
            return
        self._drained += len(data)
        if self._drained > DRAIN_BYTES:
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        refused = getattr(self.conn, "refused", None)
        if refused is None or refused.error_status_hint != 431:
            super().send_400_response(msg)
            return
        head = (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(_BODY)).encode() + b"\r\n"
            b"connection: close\r\n\r\n"
        )
        self.transport.write(head + _BODY)
        self._drained = 0
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(DRAIN_SECONDS, self.transport.close)
