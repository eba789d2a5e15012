"""The hot path: every generating and embedding route, as plain ASGI, whatever its protocol.

Plain ASGI (not a Starlette endpoint) because every request goes through here: we read the body
once with a size limit, watch for the client going away (and cancel the upstream call when it
does), and write headers and SSE bytes straight to the server. The route's `ClientProtocol`
decodes the request into the internal form and encodes the answer (or the error) in the client's
own wire format; an upstream answer already in that format is relayed as its bytes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry.trace import Span, SpanKind

from gateway.chain import FILE_SEARCH_CHAIN
from gateway.context import RequestContext
from gateway.edge import ClientProtocol
from gateway.errors import ClientGone, GatewayError
from gateway.exchange import Exchange
from gateway.protocols.model import Events, Start
from gateway.response import GatewayResponse
from gateway.validation import parse_json_object
from middleware.auth import authenticate, check_model

if TYPE_CHECKING:
    from gateway.app import Gateway

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Longest a stream keeps the event loop between two chances for other requests to run.
STREAM_TURN_S = 0.001
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


async def read_body(receive: Receive, headers: dict[str, str], limit: int, timeout_s: float = 30.0) -> bytes:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_chunks(receive, limit)
    except TimeoutError:
        # A client trickling its body would hold a connection and a task for as long as it likes.
        raise GatewayError(
            408,
            f"The request body was not received within {timeout_s:g}s; send it in one go.",
            code="request_timeout",
        ) from None


async def _read_chunks(receive: Receive, limit: int) -> bytes:
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


def internal_error(request_id: str) -> GatewayError:
    return GatewayError(
        500,
        f"The gateway failed to handle this request (request id {request_id}).",
        type="server_error",
        code="internal_error",
    )


def header_list(ctx: RequestContext | None, request_id: str, started: float, extra: dict[str, str]) -> list:
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


class ProtocolEndpoint:
    """One route (chat completions, responses, messages, completions, embeddings) through auth,
    the tenant's chain and the router."""

    def __init__(self, gateway: Gateway, protocol: ClientProtocol) -> None:
        self.gateway = gateway
        self.protocol = protocol
        self.chain_kind = "embeddings" if protocol.model_kind == "embedding" else "chat"

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
        protocol = self.protocol
        try:
            if scope["method"] != "POST":
                raise GatewayError(
                    405, f"Method {scope['method']} is not allowed here; use POST.", code="method_not_allowed"
                )
            owner, policy = authenticate(
                protocol.presented_key(headers), self.gateway.policies.snapshot, protocol.key_hint
            )
            body = parse_json_object(
                await read_body(
                    receive,
                    headers,
                    self.gateway.config.server.max_body_bytes,
                    self.gateway.config.server.body_timeout_s,
                )
            )
            request = await protocol.decode(body, headers, policy)
            known = self.gateway.serves(request.model, protocol.model_kind)
            check_model(policy, request.model, known, self.gateway.models_of(policy, protocol.model_kind))
            ctx = RequestContext(
                request_id=request_id,
                started=started,
                policy=policy,
                key_id=owner.key_id,
                request=request,
                client_headers=headers,
            )
            if span is not None:
                span.set_attributes(
                    {
                        "gateway.tenant": policy.tenant,
                        "gateway.protocol": protocol.name,
                        "gen_ai.request.model": request.model,
                        "gen_ai.operation.name": ctx.operation,
                    }
                )
            await self._run(ctx, receive, send, exchange)
        except GatewayError as error:
            exchange.fail(error.status, f"{error.code}: {error.message}")
            await self._send_error(send, error, request_id, started, ctx)
        except ClientGone:
            exchange.fail(499, "client disconnected before the body was read")
            exchange.client_gone = True
            log.info("request %s: client disconnected before the body was read", request_id)
        except Exception:
            # A bug of ours: the client gets an envelope and the request id, the log the traceback.
            log.exception("request %s failed", request_id)
            exchange.fail(500, "internal_error")
            await self._send_error(send, internal_error(request_id), request_id, started, ctx)
        finally:
            self.gateway.observability.record(ctx, exchange, span, self.protocol.name)

    async def _send_error(
        self, send: Send, error: GatewayError, request_id: str, started: float, ctx: RequestContext | None
    ) -> None:
        status, body = self.protocol.error_response(error)
        headers = JSON_HEADERS + header_list(ctx, request_id, started, error.headers)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _run(self, ctx: RequestContext, receive: Receive, send: Send, exchange: Exchange) -> None:
        task = asyncio.current_task()
        assert task is not None
        watching = {"answered": False, "gone": False}

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    # After the last byte went out the server reports a disconnect as well: that is
                    # the end of a complete exchange, not a client that left.
                    if not watching["answered"]:
                        watching["gone"] = True
                        task.cancel()
                    return

        watcher = asyncio.create_task(watch_disconnect())
        response: GatewayResponse | None = None
        try:
            kind = self.chain_kind if ctx.request.file_search is None else FILE_SEARCH_CHAIN
            response = await self.gateway.handler_for(ctx.tenant, kind)(ctx)
            exchange.status = response.status
            if response.is_stream:
                await send_stream(ctx, response, send, exchange, self.protocol, watching)
            else:
                await self._send_json(ctx, response, send, exchange, watching)
        except asyncio.CancelledError:
            if not watching["gone"]:
                raise
            task.uncancel()
            exchange.fail(499, "client disconnected")
            exchange.client_gone = True
            ctx.decide("proxy", "client_disconnected")
            log.info("request %s: client disconnected; upstream call cancelled", ctx.request_id)
        finally:
            watcher.cancel()
            if response is not None:
                # Every stage's clean-up (settling usage, closing the upstream) runs now, however
                # far the stream got; shielded so a client hanging up cannot interrupt it.
                await asyncio.shield(response.aclose())
                ctx.upstream_s += response.wait.waited_s

    async def _send_json(
        self,
        ctx: RequestContext,
        response: GatewayResponse,
        send: Send,
        exchange: Exchange,
        watching: dict[str, bool],
    ) -> None:
        protocol = self.protocol
        if response.is_raw and response.wire == protocol.name and response.raw is not None:
            body = await protocol.relay_json(response.raw, ctx)
        else:
            completion = response.completion()
            completion.model = ctx.served_model or ctx.model
            body = await protocol.encode_json(completion, ctx)
        if ctx.policy.log_content:
            exchange.response_body = orjson.loads(body)
        headers = JSON_HEADERS + header_list(ctx, ctx.request_id, ctx.started, response.headers)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        watching["answered"] = True
        exchange.ended = time.perf_counter()
        await send({"type": "http.response.body", "body": body})


async def send_stream(
    ctx: RequestContext,
    response: GatewayResponse,
    send: Send,
    exchange: Exchange,
    protocol: ClientProtocol,
    watching: dict[str, bool] | None = None,
) -> None:
    """Relay or encode a stream. A failure after the headers went out ends the stream with the
    protocol's error event (never a quiet end that passes a truncated answer off as complete);
    a failing `send` means the client is gone (499). The stream is always closed before this
    returns, so every stage's clean-up (settling usage, returning the upstream connection) runs
    now, however far the client read."""
    watching = watching if watching is not None else {}

    def report(error: GatewayError) -> None:
        ctx.decide("proxy", "stream_interrupted", reason=error.message)
        exchange.error = f"{error.code}: {error.message}"
        log.warning("request %s: stream interrupted: %s", ctx.request_id, error.message)

    if response.is_raw and response.wire == protocol.name and response.stream is not None:
        chunks = _relay(protocol.relay_stream(response.stream, ctx), protocol, report, ctx.request_id)
    else:
        events = _public_model(_guarded(response.events(), ctx), ctx.served_model or ctx.model)
        chunks = protocol.encode_stream(events, ctx, report)
    try:
        # The router already waited for the upstream's first bytes, so this costs no latency.
        chunk = await anext(chunks, None)
        headers = SSE_HEADERS + header_list(ctx, ctx.request_id, ctx.started, response.headers)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        turn_started = time.perf_counter()
        while chunk is not None:
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            # An upstream that has the whole answer buffered never makes these awaits suspend:
            # give the loop back every few milliseconds so one long stream cannot stall others.
            now = time.perf_counter()
            if now - turn_started > STREAM_TURN_S:
                await asyncio.sleep(0)
                turn_started = time.perf_counter()
            chunk = await anext(chunks, None)
        watching["answered"] = True
        exchange.ended = time.perf_counter()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError as exc:  # ASGI servers that raise on a closed connection (uvicorn drops quietly)
        exchange.fail(499, f"client disconnected mid-stream: {exc}")
        exchange.client_gone = True
        ctx.decide("proxy", "client_disconnected")
        log.info("request %s: client disconnected mid-stream", ctx.request_id)
    finally:
        await asyncio.shield(_close(chunks, response))


async def _close(chunks: AsyncIterator[bytes], response: GatewayResponse) -> None:
    await chunks.aclose()  # type: ignore[attr-defined]
    await response.aclose()


async def _relay(
    stream: AsyncIterator[bytes],
    protocol: ClientProtocol,
    report: Callable[[GatewayError], None],
    request_id: str,
) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield chunk
    except GatewayError as error:
        report(error)
        yield protocol.stream_error(error)
    except Exception:
        log.exception("request %s: stream failed", request_id)
        error = internal_error(request_id)
        report(error)
        yield protocol.stream_error(error)


async def _guarded(events: Events, ctx: RequestContext) -> Events:
    """Events, with a bug of ours mid-stream turned into a 500 the encoder can render."""
    try:
        async for event in events:
            yield event
    except GatewayError:
        raise
    except Exception as exc:
        log.exception("request %s: stream failed", ctx.request_id)
        ctx.decide("proxy", "stream_failed")
        raise internal_error(ctx.request_id) from exc


async def _public_model(events: Events, model: str) -> Events:
    """Answers the gateway encodes name the public model the client asked for (a fallback's name
    if one answered), never the upstream's internal one."""
    async for event in events:
        yield replace(event, model=model) if isinstance(event, Start) else event
