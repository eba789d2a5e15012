"""Providers that do not speak the OpenAI wire format (Anthropic, Bedrock, Gemini, ...) via litellm.

litellm is imported when the first such deployment is configured (at start-up), never at request
time and never for a config that only uses OpenAI-compatible upstreams: it is heavy to import.
Retries and fallbacks stay with our router, so litellm's own are switched off.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.config import DeploymentConfig
from gateway.errors import StreamInterrupted
from gateway.protocols.request import GatewayRequest
from gateway.protocols.sse import DONE_EVENT, encode_event
from gateway.response import GatewayResponse
from gateway.upstreams.base import UpstreamFailure, parse_retry_after

# litellm must use the price map shipped inside the package, never fetch one.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

# Parameters we set ourselves and the client may not override.
_RESERVED = frozenset({"model", "messages", "stream", "input", "stream_options"})


class LiteLLMClient:
    def __init__(self) -> None:
        import litellm  # heavy: done once, when a deployment needs it

        litellm.suppress_debug_info = True
        litellm.telemetry = False
        self._litellm = litellm

    async def close(self) -> None:
        return None

    def _params(self, deployment: DeploymentConfig, body: dict[str, Any]) -> dict[str, Any]:
        params = {k: v for k, v in body.items() if k not in _RESERVED}
        params.update(deployment.provider_params)
        params.update(
            model=f"{deployment.provider}/{deployment.model}",
            timeout=deployment.timeout_s,
            num_retries=0,
            drop_params=True,  # a parameter the provider lacks is dropped, not an error
        )
        key = deployment.api_key()
        if key:
            params["api_key"] = key
        if deployment.api_base:
            params["api_base"] = deployment.api_base
        if deployment.api_version:
            params["api_version"] = deployment.api_version
        return params

    def _failure(self, exc: Exception) -> UpstreamFailure:
        litellm = self._litellm
        if isinstance(exc, litellm.Timeout):
            return UpstreamFailure("timeout", str(exc))
        if isinstance(exc, litellm.APIConnectionError):
            return UpstreamFailure("connect", str(exc))
        status = getattr(exc, "status_code", None)
        if isinstance(status, int):
            response = getattr(exc, "response", None)
            retry_after = None
            if response is not None and getattr(response, "headers", None) is not None:
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            message = getattr(exc, "message", None) or str(exc)
            body = _error_body(message)
            return UpstreamFailure(
                "http", f"HTTP {status}", status=status, body=body, retry_after_s=retry_after
            )
        return UpstreamFailure("connect", f"{type(exc).__name__}: {exc}")

    async def generate(
        self, deployment: DeploymentConfig, request: GatewayRequest, headers: dict[str, str] | None = None
    ) -> GatewayResponse:
        request.check_translatable("chat")
        body, stream = request.body, request.stream
        params = self._params(deployment, body)
        if stream:
            params["stream_options"] = {"include_usage": True}
        if headers:
            params["extra_headers"] = headers
        try:
            result = await self._litellm.acompletion(messages=body["messages"], stream=stream, **params)
        except Exception as exc:  # litellm raises its own hierarchy; map all of it
            raise self._failure(exc) from exc
        if not stream:
            return GatewayResponse(raw=orjson.dumps(result.model_dump(exclude_none=True)))
        iterator = result.__aiter__()
        try:
            first = await anext(iterator)
        except StopAsyncIteration as exc:
            raise UpstreamFailure("stream", "stream ended before its first chunk") from exc
        except Exception as exc:
            raise self._failure(exc) from exc
        return GatewayResponse(stream=_sse(first, iterator))

    async def embeddings(
        self, deployment: DeploymentConfig, request: GatewayRequest, headers: dict[str, str] | None = None
    ) -> GatewayResponse:
        body = request.body
        params = self._params(deployment, body)
        params.pop("drop_params", None)
        try:
            result = await self._litellm.aembedding(input=body["input"], **params)
        except Exception as exc:
            raise self._failure(exc) from exc
        return GatewayResponse(wire="embeddings", raw=orjson.dumps(result.model_dump(exclude_none=True)))


async def _sse(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    """litellm's chunk objects as chat SSE bytes; a failure after the first is a StreamInterrupted."""
    yield encode_event(first.model_dump(exclude_none=True))
    try:
        async for chunk in rest:
            yield encode_event(chunk.model_dump(exclude_none=True))
    except Exception as exc:  # litellm raises its own hierarchy mid-stream too
        raise StreamInterrupted(f"the upstream stream broke: {type(exc).__name__}") from exc
    yield DONE_EVENT


def _error_body(message: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error"}})
