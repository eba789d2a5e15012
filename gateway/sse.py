"""Server-sent events as OpenAI streams them: `data: <json>\\n\\n` events ending in `data: [DONE]`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

DONE_EVENT = b"data: [DONE]\n\n"


def encode_event(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def error_event(message: str, type: str = "upstream_error", code: str | None = "stream_interrupted") -> bytes:
    # The openai SDK raises APIError when a stream event carries an "error" object.
    return encode_event({"error": {"message": message, "type": type, "param": None, "code": code}})


async def iter_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Re-cut arbitrary byte chunks into whole events (each ending in a blank line)."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk.replace(b"\r\n", b"\n")
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            yield buffer[: end + 2]
            buffer = buffer[end + 2 :]
    if buffer.strip():
        yield buffer if buffer.endswith(b"\n\n") else buffer.rstrip(b"\n") + b"\n\n"


def event_data(event: bytes) -> bytes | None:
    """The joined `data:` payload of one event, or None for comments and keep-alives."""
    parts = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(parts) if parts else None


# A mapper returns the chunk itself (unchanged), a new dict (replacement) or None (drop it).
# In-place edits of the chunk are not seen: return a new dict to change it.
ChunkMapper = Callable[[dict[str, Any]], dict[str, Any] | None]


async def map_chunks(chunks: AsyncIterator[bytes], mapper: ChunkMapper) -> AsyncIterator[bytes]:
    """Let a stage look at (and rewrite or drop) each JSON chunk; other events pass untouched."""
    async for event in iter_events(chunks):
        payload = event_data(event)
        if payload is None or payload == b"[DONE]":
            yield event
            continue
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            yield event
            continue
        mapped = mapper(chunk)
        if mapped is None:
            continue
        # Returning the very same object means "unchanged": relay the original bytes, no re-encoding.
        yield event if mapped is chunk else encode_event(mapped)
