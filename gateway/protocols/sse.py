"""Server-sent events: `event: <name>` (optional) and `data: <json>` lines, ending in a blank line.

OpenAI's chat and legacy completions streams are data-only and end in `data: [DONE]`; the
Responses API and Anthropic's Messages API name every event. One parser serves all of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.errors import StreamInterrupted

DONE_EVENT = b"data: [DONE]\n\n"


def encode_event(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def encode_named(name: str, data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def iter_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Re-cut arbitrary byte chunks into whole events (each ending in a blank line)."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk.replace(b"\r\n", b"\n") if b"\r" in chunk else chunk
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            yield buffer[start : end + 2]
            start = end + 2
        if start:
            buffer = buffer[start:]
    if buffer.strip():
        yield buffer if buffer.endswith(b"\n\n") else buffer.rstrip(b"\n") + b"\n\n"


def event_data(event: bytes) -> bytes | None:
    """The joined `data:` payload of one event, or None for comments and keep-alives."""
    if event.startswith(b"data:") and event.count(b"\n") == 2:  # the common one-line event
        return event[5:-2].lstrip(b" ")
    parts = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(parts) if parts else None


def event_name(event: bytes) -> str | None:
    if not event.startswith(b"event:"):
        for line in event.split(b"\n"):
            if line.startswith(b"event:"):
                return line[6:].strip().decode("utf-8", "replace")
        return None
    return event[6 : event.index(b"\n")].strip().decode("utf-8", "replace")


async def iter_json(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The JSON object of each data event, until `data: [DONE]` or the end; an unreadable event
    is the upstream's failure (StreamInterrupted), anything but an object is skipped."""
    async for event in iter_events(chunks):
        payload = event_data(event)
        if not payload:
            continue
        if payload == b"[DONE]":
            return
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise StreamInterrupted(f"the upstream sent an unreadable stream event ({exc})") from exc
        if isinstance(data, dict):
            yield data


async def replay(events: list[bytes]) -> AsyncIterator[bytes]:
    """Kept events as a stream again (to decode what a tap let through untouched)."""
    for event in events:
        yield event
