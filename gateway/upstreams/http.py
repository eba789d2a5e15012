"""The fast path: upstreams reached over HTTP with one pooled aiohttp session.

OpenAI-compatible servers (chat completions, and where the deployment says so the Responses API
and legacy completions) and Anthropic's Messages API. The body is the internal request encoded
for the endpoint the deployment speaks; when that is the client's own protocol, the client's
body is relayed (see `gateway.protocols.request`).

aiohttp rather than httpx: with the same starlette pass-through, an aiohttp ClientSession
sustains several times the requests per second of httpx.AsyncClient on one core, and the
upstream client is the gateway's bottleneck (see bench/ for the measurement).
SSE bytes are relayed as they arrive; nothing is re-serialised on the way.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from gateway.config import DeploymentConfig
from gateway.errors import StreamInterrupted
from gateway.protocols import chat, wire_codec
from gateway.protocols.request import GatewayRequest
from gateway.response import GatewayResponse, WaitClock
from gateway.upstreams.base import UpstreamFailure, parse_retry_after

OPENAI_API_BASE = "https://api.openai.com/v1"
ANTHROPIC_API_BASE = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
# Upstream response headers worth handing to the client.
RELAYED_HEADERS = ("x-request-id", "openai-processing-ms", "openai-model", "request-id")
# What a complete stream of each protocol ends with (checked in its last bytes).
STREAM_ENDS: dict[str, tuple[bytes, ...]] = {
    "chat": (b"[DONE]",),
    "completions": (b"[DONE]",),
    "responses": (b"response.completed", b"response.incomplete", b"response.failed"),
    "messages": (b"message_stop",),
}


def endpoint_url(deployment: DeploymentConfig, operation: str) -> str:
    """The URL for "chat/completions", "responses", "completions", "embeddings" or "messages"."""
    if deployment.provider == "anthropic":
        return f"{(deployment.api_base or ANTHROPIC_API_BASE).rstrip('/')}/v1/{operation}"
    base = (deployment.api_base or OPENAI_API_BASE).rstrip("/")
    if deployment.provider == "azure":
        return (
            f"{base}/openai/deployments/{deployment.model}/{operation}?api-version={deployment.api_version}"
        )
    return f"{base}/{operation}"


def auth_headers(deployment: DeploymentConfig, request: GatewayRequest | None = None) -> dict[str, str]:
    key = deployment.api_key()
    headers: dict[str, str] = {}
    if deployment.provider == "anthropic":
        headers["anthropic-version"] = ANTHROPIC_VERSION
        if request is not None:
            headers.update(request.relay_headers)  # the client's anthropic-version / -beta
        if key:
            headers["x-api-key"] = key
        return headers
    if not key:
        return headers
    if deployment.provider == "azure":
        return {"api-key": key}
    return {"Authorization": f"Bearer {key}"}


def wire_for(deployment: DeploymentConfig, request: GatewayRequest) -> str:
    """The protocol to speak to this deployment: the client's own when it has it, else chat."""
    apis = deployment.speaks
    if request.protocol in apis:
        return request.protocol
    # Chat is the lingua franca; a deployment without it gets its own API translated to.
    return "chat" if "chat" in apis else apis[0]


def upstream_request(deployment: DeploymentConfig, request: GatewayRequest, wire: str) -> tuple[str, dict]:
    """(operation path, body) for speaking `wire` to this deployment."""
    request.check_translatable(wire)
    if wire == "chat":
        return "chat/completions", chat.upstream_body(request, deployment.model)
    codec = wire_codec(wire)
    return wire, codec.upstream_body(request, deployment.model)  # type: ignore[attr-defined]


class HTTPClient:
    def __init__(self, max_connections: int = 1000) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily inside the running loop (aiohttp binds the session to it).
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, ttl_dns_cache=300, enable_cleanup_closed=True
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(
        self,
        deployment: DeploymentConfig,
        operation: str,
        payload: dict[str, Any],
        stream: bool,
        headers: dict[str, str],
    ) -> aiohttp.ClientResponse:
        if stream:
            # Between chunks the read timeout applies; a stream may legitimately run for minutes.
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=deployment.timeout_s, sock_read=deployment.timeout_s
            )
        else:
            timeout = aiohttp.ClientTimeout(total=deployment.timeout_s)
        url = endpoint_url(deployment, operation)
        try:
            response = await self._client().post(
                url, data=orjson.dumps(payload), headers=headers, timeout=timeout
            )
        except TimeoutError as exc:
            raise UpstreamFailure("timeout", f"no response within {deployment.timeout_s:g}s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamFailure("connect", f"{type(exc).__name__}: {exc}", where=url) from exc
        if response.status >= 400:
            try:
                error_body = await response.read()
            except (TimeoutError, aiohttp.ClientError):
                error_body = b""
            finally:
                response.release()
            raise UpstreamFailure(
                "http",
                f"HTTP {response.status}",
                status=response.status,
                body=error_body,
                retry_after_s=parse_retry_after(response.headers.get("Retry-After")),
            )
        return response

    async def generate(
        self, deployment: DeploymentConfig, request: GatewayRequest, headers: dict[str, str] | None = None
    ) -> GatewayResponse:
        wire = wire_for(deployment, request)
        operation, payload = upstream_request(deployment, request, wire)
        return await self._call(deployment, operation, payload, request.stream, wire, request, headers)

    async def embeddings(
        self, deployment: DeploymentConfig, request: GatewayRequest, headers: dict[str, str] | None = None
    ) -> GatewayResponse:
        payload = {**request.body, "model": deployment.model}
        return await self._call(deployment, "embeddings", payload, False, "embeddings", request, headers)

    async def _call(
        self,
        deployment: DeploymentConfig,
        operation: str,
        payload: dict[str, Any],
        stream: bool,
        wire: str,
        request: GatewayRequest,
        extra_headers: dict[str, str] | None,
    ) -> GatewayResponse:
        headers = {
            "Content-Type": "application/json",
            **(extra_headers or {}),
            **auth_headers(deployment, request),
        }
        response = await self._post(deployment, operation, payload, stream, headers)
        relayed = {f"x-upstream-{h}": response.headers[h] for h in RELAYED_HEADERS if h in response.headers}
        if not stream:
            try:
                raw = await response.read()
            except TimeoutError as exc:
                raise UpstreamFailure(
                    "timeout", f"body not received within {deployment.timeout_s:g}s"
                ) from exc
            except aiohttp.ClientError as exc:
                raise UpstreamFailure("stream", f"response body broken: {exc}") from exc
            finally:
                response.release()
            content_type = response.headers.get("Content-Type", "")
            if "json" not in content_type and not _is_json(raw):
                # An HTML error page or a proxy's text with status 200: not an answer, whatever
                # the status says (a JSON body under another content type is accepted).
                raise UpstreamFailure(
                    "body", f"the upstream answered {content_type or 'no content type'}, not JSON"
                )
            return GatewayResponse(status=response.status, wire=wire, raw=raw, headers=relayed)
        # Wait for the first bytes here, inside the router's retry loop: a stream that fails
        # before anything reached the client can still be retried or sent to a fallback.
        try:
            first = await response.content.readany()
        except TimeoutError as exc:
            response.close()
            raise UpstreamFailure("timeout", f"no stream data within {deployment.timeout_s:g}s") from exc
        except aiohttp.ClientError as exc:
            response.close()
            raise UpstreamFailure("stream", f"stream broke before its first chunk: {exc}") from exc
        if not first:
            response.close()
            raise UpstreamFailure("stream", "stream ended before its first chunk")
        content_type = response.headers.get("Content-Type", "")
        if "event-stream" not in content_type:
            response.close()
            raise UpstreamFailure(
                "body", f"asked for a stream, the upstream answered {content_type or 'no content type'}"
            )
        wait = WaitClock()
        return GatewayResponse(
            status=response.status,
            wire=wire,
            stream=relay_stream(response, first, STREAM_ENDS[wire], wait),
            headers=relayed,
            wait=wait,
        )


async def relay_stream(
    response: aiohttp.ClientResponse, first: bytes, ends: tuple[bytes, ...], wait: WaitClock
) -> AsyncIterator[bytes]:
    """Yield the upstream's bytes as they come; an unfinished stream raises instead of ending quietly.

    Complete means the last event is the protocol's final one, so `tail` keeps the bytes of the
    latest event (a Responses API final event repeats the whole answer: it can be large)."""
    tail = _last_event(first)
    finished = False
    clock = time.perf_counter
    try:
        yield first
        while True:
            started = clock()
            try:
                chunk = await response.content.readany()
            except TimeoutError as exc:
                raise StreamInterrupted("the upstream stopped sending mid-stream (read timeout)") from exc
            except aiohttp.ClientError as exc:
                raise StreamInterrupted(f"the upstream stream broke: {exc}") from exc
            finally:
                wait.waited_s += clock() - started
            if not chunk:
                break
            tail = _last_event(tail + chunk)
            yield chunk
        if not any(end in tail for end in ends):
            raise StreamInterrupted("the upstream closed the stream before it finished")
        finished = True
    finally:
        if finished:
            response.release()  # clean end: the connection goes back to the pool
        else:
            # Closing drops the connection: that is how a client that went away (or a broken
            # stream) cancels the upstream generation instead of letting it run on.
            response.close()


def _last_event(data: bytes) -> bytes:
    """The last event of `data` (and what follows it), whole or in the making."""
    body = data.rstrip(b"\r\n")
    boundary = max(body.rfind(b"\n\n"), body.rfind(b"\r\n\r\n"))
    return data[boundary:] if boundary >= 0 else data


def _is_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True
