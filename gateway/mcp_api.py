"""An MCP server at `/mcp` (streamable HTTP, the official `mcp` package) so agents (Claude Code,
Cursor, the Agents SDK) reach the tenant's documents as tools: `search` (ranked passages with their
source and the retrieval confidence, and whether the tenant's policy would refuse on it) and
`fetch` (a passage, or a whole document, by id, with its citation); see gateway.mcp_server.

Authenticated by the tenant's API key like every /v1 route (`Authorization: Bearer ...`): a
request without a valid key gets a 401 in OpenAI's envelope before the MCP layer sees it, and each
tool call searches only the stores of the tenant whose key it carries. The `mcp` package is
imported, and its session manager started, on the first request: a gateway whose clients never
use MCP does not pay its ~30 MB.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import GatewayError, error_response
from gateway.proxy import request_headers

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.policy import Policy
    from gateway.store_search import StoreSearch


class MCPEndpoint:
    def __init__(
        self,
        policy_of: Callable[[dict[str, str]], Policy],
        admitted: Callable[[dict[str, str], str | None], Awaitable[Policy]],
        stores: StoreSearch,
    ) -> None:
        self._policy_of = policy_of  # ASGI headers -> the tenant's policy, or a 401
        self._admitted = admitted  # the same, a tool call counted against the rate limits
        self._stores = stores
        self._app: ASGIApp | None = None
        self._starting = asyncio.Lock()
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            self._policy_of(request_headers(scope))
        except GatewayError as error:
            await error_response(error)(scope, receive, send)
            return
        app = self._app or await self._start()
        await app(scope, receive, send)

    async def _start(self) -> ASGIApp:
        async with self._starting:
            if self._app is None:
                from gateway.mcp_server import build_server

                server, app = build_server(self._admitted, self._stores)
                ready = asyncio.Event()

                async def run() -> None:
                    async with server.session_manager.run():
                        ready.set()
                        await self._stop.wait()

                self._runner = asyncio.get_running_loop().create_task(run())
                await ready.wait()
                self._app = app
            return self._app

    async def close(self) -> None:
        """Stop the session manager, if a request started it."""
        if self._runner is not None:
            self._stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None


def install(gateway: Gateway) -> MCPEndpoint:
    return MCPEndpoint(gateway.policy_of_headers, gateway.admitted_policy, gateway.vector_stores.searcher)
