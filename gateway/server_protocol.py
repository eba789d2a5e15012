"""uvicorn's httptools protocol with a deadline for the request headers.

uvicorn drops idle keep-alive connections but has no limit on how long a client may take to send
its headers: 200 connections trickling a byte a second were kept open indefinitely, each holding
a socket and a parser. Here the clock starts when the connection opens (or, on a kept-alive
connection, when the next request's first byte arrives) and the connection is closed if the
headers are not complete by `header_timeout_s`. The body has its own deadline in the proxy.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT_ENV = "RAG_GATEWAY_HEADER_TIMEOUT_S"
log = logging.getLogger("rag_gateway.server")


class HeaderTimeoutProtocol(HttpToolsProtocol):
    # Read once per process: uvicorn builds this class by name in every worker.
    header_timeout_s = float(os.environ.get(HEADER_TIMEOUT_ENV) or 10.0)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            log.info(
                "dropping %s: no complete request headers within %gs", self.client, self.header_timeout_s
            )
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
