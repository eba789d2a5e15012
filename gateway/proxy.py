"""The hot path: `/v1/chat/completions` and `/v1/embeddings` as plain ASGI handlers.

Plain ASGI (not a Starlette endpoint) because every request goes through here: we read the body
once with a size limit, watch for the client going away (and cancel the upstream call when it
does), and write headers and SSE bytes straight to the server.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span, SpanKind, StatusCode

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.request_log import entry_for
from gateway.response import GatewayResponse
from gateway.sse import error_event
from gateway.telemetry import usage_attributes
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


# Request ids: a random per-process prefix plus a counter; unique across replicas and restarts,
# and far cheaper than a uuid4 (an os.urandom call) per request.
_ID_PREFIX = os.urandom(10).hex()
_id_counter = itertools.count()


def request_id_from(headers: dict[str, str]) -> str:
    given = headers.get("x-request-id", "")
    # Echo the client's id when it is a sane token; never reflect arbitrary bytes into headers.
    if 0 < len(given) <= 128 and given.isprintable() and given.isascii():
        return given
    return f"{_ID_PREFIX}{next(_id_counter) & 0xFFFFFFFFFFFF:012x}"


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


def _usage_of(response: GatewayResponse) -> dict[str, Any] | None:
    try:
        usage = response.json().get("usage")
    except ValueError:  # not JSON: nothing to count
        return None
    return usage if isinstance(usage, dict) else None


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


@dataclass(slots=True)
class Exchange:
    """How one request ended, for the request log, the metrics and the SERVER span."""

    status: int = 200
    error: str | None = None
    response_body: dict[str, Any] | None = None


class OpenAIEndpoint:
    """One OpenAI route ("chat" or "embeddings") through auth, the tenant's chain and the router."""

    def __init__(self, gateway: Gateway, endpoint: str) -> None:
        self.gateway = gateway
        self.endpoint = endpoint
        self.operation = "chat" if endpoint == "chat" else "embeddings"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        headers = request_headers(scope)
        request_id = request_id_from(headers)
        tracer = self.gateway.observability.tracing.tracer
        if tracer is None:
            await self._handle(scope, receive, send, started, headers, request_id, None)
            return
        parent = self.gateway.observability.tracing.propagator.extract(headers)
        with tracer.start_as_current_span(
            f"POST {scope['path']}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": "POST",
                "url.path": scope["path"],
                "gateway.request_id": request_id,
            },
        ) as span:
            await self._handle(scope, receive, send, started, headers, request_id, span)

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        started: float,
        headers: dict[str, str],
        request_id: str,
        span: Span | None,
    ) -> None:
        ctx: RequestContext | None = None
        exchange = Exchange()
        try:
            if scope["method"] != "POST":
                raise GatewayError(
                    405, f"Method {scope['method']} is not allowed here; use POST.", code="method_not_allowed"
                )
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
            if span is not None:
                span.set_attributes(
                    {
                        "gateway.tenant": policy.tenant,
                        "gen_ai.request.model": model,
                        "gen_ai.operation.name": self.operation,
                    }
                )
            await self._run(ctx, receive, send, exchange)
        except GatewayError as error:
            exchange.status, exchange.error = error.status, f"{error.code}: {error.message}"
            await send_error(send, error, request_id, started, ctx)
        except ClientGone:
            exchange.status, exchange.error = 499, "client disconnected before the body was read"
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
            exchange.status, exchange.error = 500, "internal_error"
            await send_error(send, error, request_id, started, ctx)
        finally:
            self._record(ctx, exchange, span, started)

    def _record(
        self, ctx: RequestContext | None, exchange: Exchange, span: Span | None, started: float
    ) -> None:
        observability = self.gateway.observability
        duration_s = time.perf_counter() - started
        if span is not None:
            span.set_attribute("http.response.status_code", exchange.status)
            if exchange.status >= 500:
                span.set_status(StatusCode.ERROR, exchange.error or "")
            if ctx is not None and ctx.usage:
                span.set_attributes(usage_attributes(ctx.usage))
        if ctx is None:
            observability.metrics.requests.labels("", "", self.endpoint, str(exchange.status)).inc()
            return
        observability.metrics.observe(ctx, exchange.status, duration_s)
        if observability.request_log.enabled:
            trace_id = format(span.get_span_context().trace_id, "032x") if span is not None else None
            observability.request_log.write(
                entry_for(ctx, exchange.status, exchange.error, trace_id, exchange.response_body)
            )

    async def _run(self, ctx: RequestContext, receive: Receive, send: Send, exchange: Exchange) -> None:
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
            exchange.status = response.status
            if response.stream is not None:
                await send_stream(ctx, response, send, exchange)
            else:
                if ctx.usage is None and response.status == 200:
                    ctx.usage = _usage_of(response)
                if ctx.policy.log_content:
                    exchange.response_body = response.json()
                await self._send_json(ctx, response, send)
            state["done"] = True
        except asyncio.CancelledError:
            if not state["gone"]:
                raise
            task.uncancel()
            exchange.status, exchange.error = 499, "client disconnected"
            ctx.decide("proxy", "client_disconnected")
            log.info("request %s: client disconnected; upstream call cancelled", ctx.request_id)
        finally:
            watcher.cancel()

    async def _send_json(self, ctx: RequestContext, response: GatewayResponse, send: Send) -> None:
        body = response.body()
        headers = JSON_HEADERS + _header_list(ctx, ctx.request_id, ctx.started, response.headers)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def send_stream(ctx: RequestContext, response: GatewayResponse, send: Send, exchange: Exchange) -> None:
    """Relay an SSE response. The stream is started before the headers go out and always closed:
    a client that hangs up at any point still runs the stages' clean-up (settling usage and spend,
    returning or dropping the upstream connection) now, not whenever the collector gets to it.
    A failing stream ends with an error event; a failing `send` means the client is gone (499)."""
    assert response.stream is not None
    stream = response.stream
    try:
        # The router already waited for the upstream's first bytes, so this costs no latency.
        chunk, failure = await _next_chunk(ctx, stream, exchange)
        headers = SSE_HEADERS + _header_list(ctx, ctx.request_id, ctx.started, response.headers)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        while chunk is not None:
            if chunk:  # a stage may yield b"" for an event it dropped
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            chunk, failure = await _next_chunk(ctx, stream, exchange)
        if failure:
            # Headers are gone already: end with an error event the openai SDK raises, never a
            # quiet end that would pass a truncated answer off as complete.
            await send({"type": "http.response.body", "body": failure, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError as exc:  # ASGI servers that raise on a closed connection (uvicorn drops quietly)
        exchange.status, exchange.error = 499, f"client disconnected mid-stream: {exc}"
        ctx.decide("proxy", "client_disconnected")
        log.info("request %s: client disconnected mid-stream", ctx.request_id)
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await asyncio.shield(aclose())


async def _next_chunk(
    ctx: RequestContext, stream: AsyncIterator[bytes], exchange: Exchange
) -> tuple[bytes | None, bytes]:
    """(the next chunk, b""), or at the end (None, the error event to send if the stream failed)."""
    try:
        return await anext(stream, None), b""
    except (StreamInterrupted, GatewayError) as exc:
        message = exc.message if isinstance(exc, GatewayError) else str(exc)
        ctx.decide("proxy", "stream_interrupted", reason=message)
        exchange.error = f"stream_interrupted: {message}"
        log.warning("request %s: stream interrupted: %s", ctx.request_id, message)
        return None, error_event(message)
    except Exception:
        log.exception("request %s: stream failed", ctx.request_id)
        ctx.decide("proxy", "stream_failed")
        exchange.error = "stream_failed"
        return None, error_event("the gateway failed mid-stream", type="server_error", code="internal_error")
