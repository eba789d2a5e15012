"""The mock upstream's native Responses API endpoint (scripted like chat: see tests/mock_upstream.py).

Steps: ok | status:<code> | tool_call | say:<text> | stream_break. The answer echoes the text of
the last user input item, as the chat mock does.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from tests.mock_upstream import MockUpstream

USAGE = {
    "input_tokens": 12,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 7,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 19,
}


def _last_user_text(body: dict[str, Any]) -> str:
    items = body.get("input")
    if isinstance(items, str):
        return items
    for item in reversed(items or []):
        if item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _response(model: str, output: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {
        "id": "resp_mock_native",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "model": model,
        "output": output,
        "usage": USAGE if status == "completed" else None,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "store": False,
    }


def _event(kind: str, sequence: int, **fields: Any) -> bytes:
    data = {"type": kind, "sequence_number": sequence, **fields}
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def handle(mock: MockUpstream, request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    mock.remember(request, body)
    model = body.get("model", "")
    step = mock.step(model)
    if step.startswith("status:"):
        error = {
            "error": {"message": f"mock error {step[7:]}", "type": "mock_error", "param": None, "code": None}
        }
        return web.json_response(error, status=int(step[7:]))
    text = step[4:] if step.startswith("say:") else f"native: {_last_user_text(body)}"
    if step == "tool_call":
        item: dict[str, Any] = {
            "id": "fc_mock",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_native",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        }
    else:
        item = {
            "id": "msg_mock",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
    if not body.get("stream"):
        return web.json_response(_response(model, [item]))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    seq = iter(range(1000))
    await response.write(_event("response.created", next(seq), response=_response(model, [], "in_progress")))
    if item["type"] == "message":
        opened = {**item, "status": "in_progress", "content": []}
        await response.write(_event("response.output_item.added", next(seq), output_index=0, item=opened))
        part = {"type": "output_text", "text": "", "annotations": []}
        await response.write(
            _event(
                "response.content_part.added",
                next(seq),
                item_id="msg_mock",
                output_index=0,
                content_index=0,
                part=part,
            )
        )
        for i in range(0, len(text), 4):
            if step == "stream_break" and i >= 8:
                assert request.transport is not None
                request.transport.close()
                return response
            await response.write(
                _event(
                    "response.output_text.delta",
                    next(seq),
                    item_id="msg_mock",
                    output_index=0,
                    content_index=0,
                    delta=text[i : i + 4],
                )
            )
    else:
        await response.write(
            _event("response.output_item.added", next(seq), output_index=0, item={**item, "arguments": ""})
        )
        await response.write(
            _event(
                "response.function_call_arguments.delta",
                next(seq),
                item_id="fc_mock",
                output_index=0,
                delta=item["arguments"],
            )
        )
    await response.write(_event("response.output_item.done", next(seq), output_index=0, item=item))
    await response.write(_event("response.completed", next(seq), response=_response(model, [item])))
    return response
