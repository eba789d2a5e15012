"""Rebuild the answer of a stream while relaying it unchanged, to cache it once it is complete.

Complete means the stream ended with `data: [DONE]` and carried no error event: a stream that
breaks, is cut by the client, or reports an error mid-way is never cached.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from gateway.cache.entry import CachedAnswer
from gateway.sse import event_data, iter_events


class StreamAnswer:
    """Accumulates one choice's deltas (content, refusal, tool calls) plus citations and usage."""

    def __init__(self) -> None:
        self.model = ""
        self.role = "assistant"
        self.content: list[str] = []
        self.refusal: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.citations: list[Any] | None = None
        self.usage: dict[str, Any] | None = None
        self.failed = False  # an error event, several choices, or something unreadable

    def feed(self, chunk: dict[str, Any]) -> None:
        if "error" in chunk:
            self.failed = True
            return
        self.model = self.model or str(chunk.get("model") or "")
        if chunk.get("citations") is not None:
            self.citations = chunk["citations"]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                self.failed = True
                continue
            delta = choice.get("delta") or {}
            self.role = delta.get("role") or self.role
            if delta.get("content"):
                self.content.append(delta["content"])
            if delta.get("refusal"):
                self.refusal.append(delta["refusal"])
            for call in delta.get("tool_calls") or []:
                self._feed_call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def _feed_call(self, call: dict[str, Any]) -> None:
        slot = self.tool_calls.setdefault(
            int(call.get("index", 0)),
            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if call.get("id"):
            slot["id"] = call["id"]
        if call.get("type"):
            slot["type"] = call["type"]
        function = call.get("function") or {}
        if function.get("name"):
            slot["function"]["name"] += function["name"]
        if function.get("arguments"):
            slot["function"]["arguments"] += function["arguments"]

    def answer(self, tenant: str, scope: str) -> CachedAnswer | None:
        if self.failed or not self.finish_reason:
            return None
        message: dict[str, Any] = {"role": self.role, "content": "".join(self.content) or None}
        if self.refusal:
            message["refusal"] = "".join(self.refusal)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return CachedAnswer(
            tenant=tenant,
            scope=scope,
            model=self.model,
            message=message,
            finish_reason=self.finish_reason,
            citations=self.citations,
            usage=self.usage,
        )


async def capture(
    stream: AsyncIterator[bytes], on_complete: Callable[[StreamAnswer], None]
) -> AsyncIterator[bytes]:
    """Relay every event as is; call `on_complete` just before relaying [DONE] of a clean stream."""
    answer = StreamAnswer()
    async for event in iter_events(stream):
        payload = event_data(event)
        if payload == b"[DONE]":
            if not answer.failed:
                on_complete(answer)
        elif payload is not None and not answer.failed:
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                answer.failed = True
            else:
                if isinstance(chunk, dict):
                    answer.feed(chunk)
                else:
                    answer.failed = True
        yield event
