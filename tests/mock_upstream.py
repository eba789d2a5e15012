"""An OpenAI-compatible mock upstream for tests and benchmarks (aiohttp, loopback only).

Behaviour is scripted per upstream model name through POST /_control:
  {"model": "m", "script": ["status:500", "ok"]}   # next calls for model m, in order
Steps: ok | status:<code>[:<retry-after>] | html | hang | stream_break | stream_empty | stream_no_done
       | slow:<ms> | slowstream:<ms> | tool_call
       | say:<text> (answer with this text; streamed 4 characters a chunk)
       | bulk:<chars>:<chunk> (stream <chars> characters of text without spaces, <chunk> a chunk)
With an empty script every call answers "ok". GET /_requests returns what was received.
Run standalone for benchmarks: python tests/mock_upstream.py --port 9100 [--latency-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

CHUNK_WORDS = ["Hello", " from", " the", " mock", " upstream", "."]


def _completion(model: str, content: str, tool_call: bool = False) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    finish = "stop"
    if tool_call:
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        }
        finish = "tool_calls"
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16},
    }


def _no_space_text(length: int) -> str:
    """Prose with its spaces removed: one endless "word", a worst case for word-shaped scanners."""
    prose = "thegatewaystreamsthislonganswerwithoutasinglespacesoeveryscannerseesonewordthatnever"
    return (prose * (length // len(prose) + 1))[:length]


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    data = {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(data) + b"\n\n"


class MockUpstream:
    def __init__(self, latency_ms: float = 0.0) -> None:
        self.latency_s = latency_ms / 1000
        self.scripts: dict[str, deque[str]] = defaultdict(deque)
        self.requests: list[dict[str, Any]] = []
        self.record = True
        self.cancelled = 0  # streams whose client went away before the end

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self.chat)
        # Native endpoints of the other protocols, one module each (tests/mock_protocols/).
        from tests.mock_protocols import completions, messages, responses

        app.router.add_post("/v1/responses", lambda r: responses.handle(self, r))
        app.router.add_post("/v1/messages", lambda r: messages.handle(self, r))
        app.router.add_post("/v1/completions", lambda r: completions.handle(self, r))
        app.router.add_post("/_control", self.control)
        app.router.add_get("/_requests", self.list_requests)
        app.router.add_post("/_reset", self.reset)
        return app

    async def control(self, request: web.Request) -> web.Response:
        data = await request.json()
        self.scripts[data["model"]].extend(data["script"])
        return web.json_response({"ok": True})

    async def reset(self, request: web.Request) -> web.Response:
        self.scripts.clear()
        self.requests.clear()
        self.cancelled = 0
        return web.json_response({"ok": True})

    async def list_requests(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests, "cancelled": self.cancelled})

    def remember(self, request: web.Request, body: dict[str, Any]) -> None:
        if self.record:
            self.requests.append(
                {
                    "path": request.path,
                    "query": dict(request.query),
                    "body": body,
                    "headers": {k.lower(): v for k, v in request.headers.items()},
                }
            )

    def step(self, model: str) -> str:
        return self._step(model)

    def _step(self, model: str) -> str:
        script = self.scripts.get(model)
        return script.popleft() if script else "ok"

    async def embeddings(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        if self.record:
            self.requests.append(
                {
                    "path": request.path,
                    "query": dict(request.query),
                    "body": body,
                    "headers": {k.lower(): v for k, v in request.headers.items()},
                }
            )
        step = self._step(body.get("model", ""))
        if step.startswith("status:"):
            error = {
                "error": {
                    "message": f"mock error {step[7:]}",
                    "type": "mock_error",
                    "param": None,
                    "code": None,
                }
            }
            return web.json_response(error, status=int(step[7:]))
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(inputs))]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": 3, "total_tokens": 3},
            }
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        model = body.get("model", "")
        if self.record:
            self.requests.append(
                {
                    "path": request.path,
                    "query": dict(request.query),
                    "body": body,
                    "headers": {k.lower(): v for k, v in request.headers.items()},
                }
            )
        step = self._step(model)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if step.startswith("status:"):
            _, code, *retry = step.split(":")
            headers = {"Retry-After": retry[0]} if retry else {}
            error = {
                "error": {"message": f"mock error {code}", "type": "mock_error", "param": None, "code": None}
            }
            return web.json_response(error, status=int(code), headers=headers)
        if step == "html":  # a proxy's error page with status 200
            return web.Response(text="<html><body>Bad gateway</body></html>", content_type="text/html")
        if step == "hang":
            await asyncio.sleep(30)
        if step.startswith("slow:"):
            await asyncio.sleep(int(step[5:]) / 1000)
        last_user = next(
            (m.get("content") for m in reversed(body.get("messages", [])) if m.get("role") == "user"), ""
        )
        said = step[4:] if step.startswith("say:") else None
        if step.startswith("bulk:"):
            total, bulk_chunk = (int(n) for n in step[5:].split(":"))
            said = _no_space_text(total)
        if not body.get("stream"):
            return web.Response(
                body=orjson.dumps(_completion(model, said or f"echo: {last_user}", step == "tool_call")),
                content_type="application/json",
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if step == "stream_empty":
            # Headers sent, then the connection drops before any event: retryable by the gateway.
            assert request.transport is not None
            request.transport.close()
            return response
        try:
            await response.write(_chunk(model, {"role": "assistant", "content": ""}))
            if step == "tool_call":  # the call's name first, its arguments in two pieces
                start = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather"}}
                await response.write(_chunk(model, {"tool_calls": [start]}))
                for piece in ('{"city": ', '"Paris"}'):
                    await response.write(
                        _chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                    )
                await response.write(_chunk(model, {}, "tool_calls"))
                await response.write(b"data: [DONE]\n\n")
                return response
            if step.startswith("bulk:"):
                words = [said[i : i + bulk_chunk] for i in range(0, len(said), bulk_chunk)]
            else:
                words = [said[i : i + 4] for i in range(0, len(said), 4)] if said else CHUNK_WORDS
            for i, word in enumerate(words):
                if step == "stream_break" and i == 2:
                    # Drop the connection mid-stream, as a crashed upstream would.
                    assert request.transport is not None
                    request.transport.close()
                    return response
                if step.startswith("slowstream:"):
                    await asyncio.sleep(int(step[11:]) / 1000)
                await response.write(_chunk(model, {"content": word}))
            await response.write(_chunk(model, {}, "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16}
                await response.write(
                    b"data: "
                    + orjson.dumps(
                        {
                            "id": "chatcmpl-mock",
                            "object": "chat.completion.chunk",
                            "created": 0,
                            "model": model,
                            "choices": [],
                            "usage": usage,
                        }
                    )
                    + b"\n\n"
                )
            if step != "stream_no_done":
                await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.cancelled += 1
            raise
        return response


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    # Run as a script (the benchmarks): the project root must be importable for tests.mock_protocols.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    mock = MockUpstream(args.latency_ms)
    mock.record = False
    web.run_app(mock.app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
