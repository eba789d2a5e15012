"""The fast path: OpenAI-compatible upstreams over one pooled aiohttp session.

aiohttp rather than httpx: with the same starlette pass-through, an aiohttp ClientSession
sustains several times the requests per second of httpx.AsyncClient on one core, and the
upstream client is the gateway's bottleneck (see bench/ for the measurement).
SSE bytes are relayed as they arrive; nothing is re-serialised on the way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from gateway.config import DeploymentConfig
from gateway.response import GatewayResponse
from gateway.upstreams.base import UpstreamFailure, parse_retry_after

OPENAI_API_BASE = "https://api.openai.com/v1"
# Upstream response headers worth handing to the client.
RELAYED_HEADERS = ("x-request-id", "openai-processing-ms", "openai-model")


def endpoint_url(deployment: DeploymentConfig, operation: str) -> str:
    """The URL for "chat/completions" or "embeddings" on this deployment."""
    base = (deployment.api_base or OPENAI_API_BASE).rstrip("/")
    if deployment.provider == "azure":
        return (
            f"{base}/openai/deployments/{deployment.model}/{operation}?api-version={deployment.api_version}"
        )
    return f"{base}/{operation}"


def auth_headers(deployment: DeploymentConfig) -> dict[str, str]:
    key = deployment.api_key()
    if not key:
        return {}
    if deployment.provider == "azure":
        return {"api-key": key}
    return {"Authorization": f"Bearer {key}"}


class OpenAIHTTPClient:
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
        body: dict[str, Any],
        stream: bool,
        extra_headers: dict[str, str] | None,
    ) -> aiohttp.ClientResponse:
        payload = dict(body)
        payload["model"] = deployment.model
        headers = {"Content-Type": "application/json", **(extra_headers or {}), **auth_headers(deployment)}
        if stream:
            # Between chunks the read timeout applies; a stream may legitimately run for minutes.
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=deployment.timeout_s, sock_read=deployment.timeout_s
            )
        else:
            timeout = aiohttp.ClientTimeout(total=deployment.timeout_s)
        try:
            response = await self._client().post(
                endpoint_url(deployment, operation),
                data=orjson.dumps(payload),
                headers=headers,
                timeout=timeout,
            )
        except TimeoutError as exc:
            raise UpstreamFailure("timeout", f"no response within {deployment.timeout_s:g}s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamFailure("connect", f"{type(exc).__name__}: {exc}") from exc
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

    async def chat(
        self,
        deployment: DeploymentConfig,
        body: dict[str, Any],
        stream: bool,
        headers: dict[str, str] | None = None,
    ) -> GatewayResponse:
        return await self._call(deployment, "chat/completions", body, stream, headers)

    async def embeddings(
        self, deployment: DeploymentConfig, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> GatewayResponse:
        return await self._call(deployment, "embeddings", body, False, headers)

    async def _call(
        self,
        deployment: DeploymentConfig,
        operation: str,
        body: dict[str, Any],
        stream: bool,
        extra_headers: dict[str, str] | None,
    ) -> GatewayResponse:
        response = await self._post(deployment, operation, body, stream, extra_headers)
        headers = {f"x-upstream-{h}": response.headers[h] for h in RELAYED_HEADERS if h in response.headers}
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
            return GatewayResponse(status=response.status, raw=raw, headers=headers)
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
        if "event-stream" not in content_type and "json" not in content_type:
            response.close()  # a JSON answer to a stream request is converted; anything else is no answer
            raise UpstreamFailure(
                "body", f"asked for a stream, the upstream answered {content_type or 'no content type'}"
            )
        return GatewayResponse(status=response.status, stream=relay_stream(response, first), headers=headers)


class StreamInterrupted(Exception):
    """The upstream stream ended without its final `data: [DONE]` event."""


async def relay_stream(response: aiohttp.ClientResponse, first: bytes) -> AsyncIterator[bytes]:
    """Yield the upstream's bytes as they come; an unfinished stream raises instead of ending quietly."""
    tail = first[-32:]
    finished = False
    try:
        yield first
        while True:
            try:
                chunk = await response.content.readany()
            except TimeoutError as exc:
                raise StreamInterrupted("the upstream stopped sending mid-stream (read timeout)") from exc
            except aiohttp.ClientError as exc:
                raise StreamInterrupted(f"the upstream stream broke: {exc}") from exc
            if not chunk:
                break
            tail = (tail + chunk)[-32:]
            yield chunk
        if b"[DONE]" not in tail:
            raise StreamInterrupted("the upstream closed the stream before it finished")
        finished = True
    finally:
        if finished:
            response.release()  # clean end: the connection goes back to the pool
        else:
            # Closing drops the connection: that is how a client that went away (or a broken
            # stream) cancels the upstream generation instead of letting it run on.
            response.close()


def _is_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True
