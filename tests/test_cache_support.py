"""Support for the cache tests (no tests here): a request context, a scripted upstream, SSE parsing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.context import RequestContext
from gateway.policy import Policy
from gateway.response import GatewayResponse
from gateway.sse import DONE_EVENT, encode_event, event_data, iter_events


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
    return RequestContext(
        request_id="req",
        started=time.perf_counter(),
        endpoint="chat",
        policy=Policy(tenant=tenant),
        key_id="k",
        body=body,
        model="m",
        stream=stream,
        client_headers=headers or {},
    )


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
            return GatewayResponse.of_json({"error": {"message": "boom"}}, status=500)
        if ctx.stream:
            return GatewayResponse(stream=self._stream())
        return GatewayResponse.of_json(completion(self.answer))

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


async def read_stream(response: GatewayResponse) -> tuple[str, list[dict[str, Any]], bool]:
    """(the content, every JSON chunk, whether [DONE] arrived) of a streamed response."""
    assert response.stream is not None
    chunks, done = [], False
    async for event in iter_events(response.stream):
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
    if response.stream is not None:
        return (await read_stream(response))[0]
    return response.json()["choices"][0]["message"]["content"]
