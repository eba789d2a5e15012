"""The hot path: `/v1/chat/completions` and `/v1/embeddings` as plain ASGI handlers.

Plain ASGI (not a Starlette endpoint) because every request goes through here: we read the body
once with a size limit, watch for the client going away (and cancel the upstream call when it
does), and write headers and SSE bytes straight to the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.response import GatewayResponse
from gateway.sse import error_event
from gateway.upstreams.openai_http import StreamInterrupted
from gateway.validation import parse_json_object, validate_chat, validate_embeddings
from middleware.auth import authenticate, check_model

if TYPE_CHECKING:
    from gateway.app import Gateway

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("rag_gateway.proxy")
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def request_headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


def request_id_from(headers: dict[str, str]) -> str:
    given = headers.get("x-request-id", "")
    # Echo the client's id when it is a sane token; never reflect arbitrary bytes into headers.
    if 0 < len(given) <= 128 and given.isprintable() and given.isascii():
        return given
    return uuid.uuid4().hex


async def read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"The request body is larger than this gateway accepts ({limit} bytes).",
        code="request_too_large",
    )


class ClientGone(Exception):
    """The client disconnected before we answered."""


def _header_list(ctx: RequestContext | None, request_id: str, started: float, extra: dict[str, str]) -> list:
    upstream_s = ctx.upstream_s if ctx is not None else 0.0
    overhead_ms = (time.perf_counter() - started - upstream_s) * 1000
    headers = [
        (b"x-request-id", request_id.encode()),
        (b"x-gateway-overhead-ms", f"{overhead_ms:.3f}".encode()),
    ]
    if ctx is not None:
        headers.extend((k.encode(), v.encode()) for k, v in ctx.response_headers.items())
    headers.extend((k.encode(), v.encode()) for k, v in extra.items())
    return headers


async def send_error(
    send: Send, error: GatewayError, request_id: str, started: float, ctx: RequestContext | None
):
    headers = JSON_HEADERS + _header_list(ctx, request_id, started, error.headers)
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": error.body()})


class OpenAIEndpoint:
    """One OpenAI route ("chat" or "embeddings") through auth, the tenant's chain and the router."""

    def __init__(self, gateway: Gateway, endpoint: str) -> None:
        self.gateway = gateway
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        headers = request_headers(scope)
        request_id = request_id_from(headers)
        if scope["method"] != "POST":
            error = GatewayError(
                405, f"Method {scope['method']} is not allowed here; use POST.", code="method_not_allowed"
            )
            await send_error(send, error, request_id, started, None)
            return
        ctx: RequestContext | None = None
        try:
            owner, policy = authenticate(headers, self.gateway.policies.snapshot)
            body = parse_json_object(
                await read_body(receive, headers, self.gateway.config.server.max_body_bytes)
            )
            if self.endpoint == "chat":
                model, stream = validate_chat(body)
            else:
                model, stream = validate_embeddings(body), False
            check_model(policy, model, self.gateway.serves(model, self.endpoint))
            ctx = RequestContext(
                request_id=request_id,
                started=started,
                endpoint=self.endpoint,
                policy=policy,
                key_id=owner.key_id,
                body=body,
                model=model,
                stream=stream,
                client_headers=headers,
            )
            await self._run(ctx, receive, send)
        except GatewayError as error:
            await send_error(send, error, request_id, started, ctx)
        except ClientGone:
            log.info("request %s: client disconnected before the body was read", request_id)
        except Exception:
            # A bug of ours: the client gets an envelope and the request id, the log the traceback.
            log.exception("request %s failed", request_id)
            error = GatewayError(
                500,
                f"The gateway failed to handle this request (request id {request_id}).",
                type="server_error",
                code="internal_error",
            )
            await send_error(send, error, request_id, started, ctx)

    async def _run(self, ctx: RequestContext, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        state = {"done": False, "gone": False}

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not state["done"]:
                        state["gone"] = True
                        task.cancel()
                    return

        watcher = asyncio.create_task(watch_disconnect())
        try:
            handler = self.gateway.handler_for(ctx.tenant, self.endpoint)
            response = await handler(ctx)
            if response.stream is not None:
                await self._send_stream(ctx, response, send)
            else:
                await self._send_json(ctx, response, send)
            state["done"] = True
        except asyncio.CancelledError:
            if not state["gone"]:
                raise
            task.uncancel()
            ctx.decide("proxy", "client_disconnected")
            log.info("request %s: client disconnected; upstream call cancelled", ctx.request_id)
        finally:
            watcher.cancel()

    async def _send_json(self, ctx: RequestContext, response: GatewayResponse, send: Send) -> None:
        body = response.body()
        headers = JSON_HEADERS + _header_list(ctx, ctx.request_id, ctx.started, response.headers)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _send_stream(self, ctx: RequestContext, response: GatewayResponse, send: Send) -> None:
        assert response.stream is not None
        headers = SSE_HEADERS + _header_list(ctx, ctx.request_id, ctx.started, response.headers)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        try:
            async for chunk in response.stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (StreamInterrupted, GatewayError) as exc:
            # Headers are gone already: end with an error event the openai SDK raises, never a
            # quiet end that would pass a truncated answer off as complete.
            message = exc.message if isinstance(exc, GatewayError) else str(exc)
            ctx.decide("proxy", "stream_interrupted", reason=message)
            log.warning("request %s: stream interrupted: %s", ctx.request_id, message)
            await send({"type": "http.response.body", "body": error_event(message), "more_body": True})
        except Exception:
            log.exception("request %s: stream failed", ctx.request_id)
            ctx.decide("proxy", "stream_failed")
            await send(
                {
                    "type": "http.response.body",
                    "body": error_event(
                        "the gateway failed mid-stream", type="server_error", code="internal_error"
                    ),
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})
