"""The mock upstream's native endpoint of this protocol (scripted like chat: see tests/mock_upstream.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from tests.mock_upstream import MockUpstream


async def handle(mock: MockUpstream, request: web.Request) -> web.StreamResponse:
    return web.json_response({"error": {"message": "not served by this mock yet"}}, status=404)
