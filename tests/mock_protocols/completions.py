"""The mock upstream's native legacy completions endpoint (scripted like chat: see tests/mock_upstream.py).

Steps: ok | status:<code> | say:<text> | stream_break. The answer is "native: <prompt>" (the
prompt as received, so a test sees what the gateway sent), streamed 4 characters a chunk.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from tests.mock_upstream import MockUpstream

USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}


def _chunk(model: str, text: str, finish: str | None = None, **extra: Any) -> bytes:
    data = {
        "id": "cmpl-mock",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + orjson.dumps(data) + b"\n\n"


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
    prompt = body.get("prompt")
    text = (
        step[4:]
        if step.startswith("say:")
        else f"native: {prompt}"
        if isinstance(prompt, str)
        else f"native: {prompt!r}"
    )
    if not body.get("stream"):
        return web.json_response(
            {
                "id": "cmpl-mock",
                "object": "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
                "usage": USAGE,
            }
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(0, len(text), 4):
        if step == "stream_break" and i >= 8:
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(_chunk(model, text[i : i + 4]))
    await response.write(_chunk(model, "", "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        data = {"id": "cmpl-mock", "object": "text_completion", "created": 0, "model": model, "choices": []}
        await response.write(b"data: " + orjson.dumps({**data, "usage": USAGE}) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    return response
