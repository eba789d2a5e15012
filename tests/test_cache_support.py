"""Support for the cache tests (no tests here): a request context, a scripted upstream, SSE parsing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.context import RequestContext
from gateway.policy import Policy
from gateway.protocols import chat
from gateway.protocols.request import GatewayRequest
from gateway.protocols.sse import DONE_EVENT, encode_event, event_data, iter_events
from gateway.response import GatewayResponse

CLIENT = GatewayRequest({"model": "m"})  # what the edge encodes an internal answer for


def make_ctx(
    messages: list[dict[str, Any]] | str,
    *,
    tenant: str = "t",
    stream: bool = False,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> RequestContext:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    body = {"model": "m", "messages": messages, **extra}
    if stream:
        body["stream"] = True
    ctx = RequestContext.internal(Policy(tenant=tenant), body, "req", "k")
    ctx.client_headers = headers or {}
    return ctx


def completion(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-up",
        "object": "chat.completion",
        "created": 1,
        "model": "m-upstream",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }


class Upstream:
    """A fake rest of the chain: answers `answer` (JSON or SSE as the request asks) and counts calls.

    `mode`: "ok", "error" (HTTP 500), "truncated" (stream stops before [DONE]),
    "error_event" (stream carries an error event, then [DONE]).
    """

    def __init__(self, answer: str = "Paris is the capital of France.", mode: str = "ok") -> None:
        self.answer = answer
        self.mode = mode
        self.calls = 0

    async def __call__(self, ctx: RequestContext) -> GatewayResponse:
        self.calls += 1
        if self.mode == "error":
            return GatewayResponse(raw=orjson.dumps({"error": {"message": "boom"}}), status=500)
        if ctx.stream:
            return GatewayResponse(stream=self._stream())
        return GatewayResponse(raw=orjson.dumps(completion(self.answer)))

    async def _stream(self) -> AsyncIterator[bytes]:
        base = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "m-upstream"}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return encode_event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        yield chunk({"role": "assistant", "content": ""})
        half = len(self.answer) // 2
        yield chunk({"content": self.answer[:half]})
        if self.mode == "truncated":
            return
        if self.mode == "error_event":
            yield encode_event({"error": {"message": "upstream died", "type": "upstream_error"}})
            yield DONE_EVENT
            return
        yield chunk({"content": self.answer[half:]})
        yield chunk({}, "stop")
        yield DONE_EVENT


def client_json(response: GatewayResponse) -> dict[str, Any]:
    """The chat completion a client would get."""
    return response.json() if response.is_raw else chat.encode_json(response.completion(), CLIENT)


def client_stream(response: GatewayResponse, request: GatewayRequest = CLIENT) -> AsyncIterator[bytes]:
    """The chat stream a client would get."""
    if response.is_raw and response.stream is not None:
        return response.stream
    return chat.encode_stream(response.events(), request, lambda error: None)


async def read_stream(
    response: GatewayResponse, request: GatewayRequest = CLIENT
) -> tuple[str, list[dict[str, Any]], bool]:
    """(the content, every JSON chunk, whether [DONE] arrived) of a streamed response."""
    chunks, done = [], False
    async for event in iter_events(client_stream(response, request)):
        payload = event_data(event)
        if payload == b"[DONE]":
            done = True
        elif payload is not None:
            chunks.append(orjson.loads(payload))
    text = "".join(
        (c.get("delta") or {}).get("content") or "" for chunk in chunks for c in chunk.get("choices") or []
    )
    return text, chunks, done


async def answer_text(response: GatewayResponse) -> str:
    if response.is_stream:
        return (await read_stream(response))[0]
    return client_json(response)["choices"][0]["message"]["content"]
