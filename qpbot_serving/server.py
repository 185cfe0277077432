"""Runs the answer service under uvicorn, with a deadline on each request's head.

uvicorn closes an idle kept-alive connection, but a client that sends one header line every
few seconds holds its connection (and a file descriptor) for as long as it likes: 400 such
clients were never closed. Here a connection must deliver a whole request head within
QPBOT_HEADER_TIMEOUT_S of opening or of its previous response.
"""

from __future__ import annotations

import asyncio
from functools import partial

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from qpbot_serving.settings import QpbotSettings


class HeadTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections whose request head is too slow."""

    def __init__(self, *args, head_timeout: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None

    def _await_head(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._await_head()

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_head()

    def connection_lost(self, exc) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)


def uvicorn_config(
    app, settings: QpbotSettings, host: str, port: int, log_level: str = "info"
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=partial(HeadTimeoutProtocol, head_timeout=settings.header_timeout_s),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        log_level=log_level,
    )


def serve(settings: QpbotSettings, host: str, port: int) -> None:
    """`qpbot serve`: the answer service for `settings` on host:port, until stopped."""
    from qpbot_serving.app import create_app

    uvicorn.Server(uvicorn_config(create_app(settings), settings, host, port)).run()
