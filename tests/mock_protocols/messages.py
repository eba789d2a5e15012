"""The mock upstream's native Anthropic Messages endpoint (scripted like chat: see tests/mock_upstream.py).

Steps: ok | status:<code> | overloaded (a 529 in Anthropic's envelope) | tool_call | say:<text>
| stream_break | stream_error (an `error` event mid-stream). The answer echoes the text of the
last user message ("native: <text>"), as the chat mock does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from tests.mock_upstream import MockUpstream

USAGE = {
    "input_tokens": 11,
    "output_tokens": 5,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
}


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return "".join(
                b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
            )
    return ""


def _event(kind: str, **fields: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"type": "error", "error": {"type": kind, "message": message}}, status=status)


async def handle(mock: MockUpstream, request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    mock.remember(request, body)
    if not request.headers.get("anthropic-version"):
        return _error(400, "invalid_request_error", "anthropic-version: header is required")
    model = body.get("model", "")
    step = mock.step(model)
    if step.startswith("status:"):
        return _error(int(step[7:]), "invalid_request_error", f"mock error {step[7:]}")
    if step == "overloaded":
        return _error(529, "overloaded_error", "Overloaded")
    text = step[4:] if step.startswith("say:") else f"native: {_last_user_text(body)}"
    if step == "tool_call":
        blocks: list[dict[str, Any]] = [
            {"type": "tool_use", "id": "toolu_mock", "name": "get_weather", "input": {"city": "Paris"}}
        ]
        stop = "tool_use"
    else:
        blocks = [{"type": "text", "text": text}]
        stop = "end_turn"
    message = {
        "id": "msg_mock_native",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": USAGE,
    }
    if not body.get("stream"):
        return web.json_response(message)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    start = {**message, "content": [], "stop_reason": None, "usage": {**USAGE, "output_tokens": 1}}
    await response.write(_event("message_start", message=start))
    await response.write(_event("ping"))
    block = blocks[0]
    if block["type"] == "text":
        await response.write(
            _event("content_block_start", index=0, content_block={"type": "text", "text": ""})
        )
        for i in range(0, len(text), 4):
            if step in ("stream_break", "stream_error") and i >= 8:
                if step == "stream_error":
                    error = {"type": "overloaded_error", "message": "Overloaded"}
                    await response.write(_event("error", error=error))
                    return response
                assert request.transport is not None
                request.transport.close()
                return response
            delta = {"type": "text_delta", "text": text[i : i + 4]}
            await response.write(_event("content_block_delta", index=0, delta=delta))
    else:
        await response.write(_event("content_block_start", index=0, content_block={**block, "input": {}}))
        delta = {"type": "input_json_delta", "partial_json": orjson.dumps(block["input"]).decode()}
        await response.write(_event("content_block_delta", index=0, delta=delta))
    await response.write(_event("content_block_stop", index=0))
    delta = {"stop_reason": stop, "stop_sequence": None}
    await response.write(
        _event("message_delta", delta=delta, usage={"output_tokens": USAGE["output_tokens"]})
    )
    await response.write(_event("message_stop"))
    return response
