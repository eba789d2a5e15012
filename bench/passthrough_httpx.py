"""Reference: the thinnest starlette pass-through, forwarding with one httpx.AsyncClient.

Run: BENCH_UPSTREAM=http://127.0.0.1:9100/v1 uvicorn bench.passthrough_httpx:app \
        --loop uvloop --http httptools --workers 1 --no-access-log
No auth, no validation, no routing: it bounds what any Python proxy on this stack can do.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:9100/v1").rstrip("/")
client: httpx.AsyncClient | None = None


@contextlib.asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    global client
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    client = httpx.AsyncClient(base_url=UPSTREAM, limits=limits, timeout=60.0)
    yield
    await client.aclose()


async def chat(request: Request) -> Response:
    assert client is not None
    body = await request.body()
    upstream_request = client.build_request(
        "POST", "/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    upstream = await client.send(upstream_request, stream=True)
    if upstream.headers.get("content-type", "").startswith("text/event-stream"):

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()

        return StreamingResponse(relay(), status_code=upstream.status_code, media_type="text/event-stream")
    content = await upstream.aread()
    await upstream.aclose()
    return Response(content, status_code=upstream.status_code, media_type="application/json")


app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])], lifespan=lifespan)
