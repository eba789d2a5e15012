"""Reference: the thinnest starlette pass-through, forwarding with one aiohttp ClientSession.

Run: BENCH_UPSTREAM=http://127.0.0.1:9100/v1 uvicorn bench.passthrough_aiohttp:app \
        --loop uvloop --http httptools --workers 1 --no-access-log
No auth, no validation, no routing: it bounds what any Python proxy on this stack can do.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:9100/v1").rstrip("/")
session: aiohttp.ClientSession | None = None


@contextlib.asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    global session
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1000), timeout=aiohttp.ClientTimeout(total=60)
    )
    yield
    await session.close()


async def chat(request: Request) -> Response:
    assert session is not None
    body = await request.body()
    upstream = await session.post(
        UPSTREAM + "/chat/completions", data=body, headers={"content-type": "application/json"}
    )
    if upstream.content_type == "text/event-stream":

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.content.iter_any():
                    yield chunk
            finally:
                upstream.release()

        return StreamingResponse(relay(), status_code=upstream.status, media_type="text/event-stream")
    content = await upstream.read()
    upstream.release()
    return Response(content, status_code=upstream.status, media_type="application/json")


app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])], lifespan=lifespan)
