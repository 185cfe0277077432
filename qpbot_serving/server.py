"""Runs the answer service under uvicorn, with bounds on what a connection may hold.

uvicorn closes an idle kept-alive connection, but nothing else: a client that sends one
header line every few seconds, or a body one byte at a time, holds its connection for as
long as it likes (400 such clients were never closed), and a request head of 400 MB was
read whole (the server grew by 400 MB per connection). Here a connection must deliver its
request head within QPBOT_HEADER_TIMEOUT_S and QPBOT_MAX_HEADER_KB, and its body within
QPBOT_BODY_TIMEOUT_S; at most QPBOT_MAX_CONNECTIONS are served at once (503 beyond).
"""

from __future__ import annotations

import asyncio
from functools import partial

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from qpbot_serving.settings import QpbotSettings

_HEAD_TOO_LARGE_BODY = b'{"error": "the request head is over its size limit"}'
HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s"
    % (len(_HEAD_TOO_LARGE_BODY), _HEAD_TOO_LARGE_BODY)
)


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections whose request head is too slow
    or too large, or whose body is too slow."""

    def __init__(self, *args, head_timeout: float, max_head_bytes: int, body_timeout: float, **kw):
        super().__init__(*args, **kw)
        self.head_timeout, self.max_head_bytes = head_timeout, max_head_bytes
        self.body_timeout = body_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = True
        self._head_bytes = 0

    # --- one timer: for the head, then for the body ------------------------------------
    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _too_slow(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _await_head(self) -> None:
        self._in_head, self._head_bytes = True, 0
        self._arm(self.head_timeout)

    # --- uvicorn's hooks -----------------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # parses: the head may complete within this piece
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._disarm()
                self.transport.write(HEAD_TOO_LARGE)
                self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm(self.body_timeout)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()  # the request is in; the response may take as long as it takes
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_head()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


def uvicorn_config(
    app, settings: QpbotSettings, host: str, port: int, log_level: str = "info"
) -> uvicorn.Config:
    protocol = partial(
        BoundedHttpProtocol,
        head_timeout=settings.header_timeout_s,
        max_head_bytes=settings.max_header_kb * 1024,
        body_timeout=settings.body_timeout_s,
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        limit_concurrency=settings.max_connections,
        log_level=log_level,
    )


def serve(settings: QpbotSettings, host: str, port: int) -> None:
    """`qpbot serve`: the answer service for `settings` on host:port, until stopped."""
    from qpbot_serving.app import create_app

    uvicorn.Server(uvicorn_config(create_app(settings), settings, host, port)).run()
