"""The chain mechanism: stages rewrite requests, short-circuit, and see responses and stream chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from gateway.chain import Handler, compose
from gateway.context import RequestContext
from gateway.policy import Policy
from gateway.response import GatewayResponse
from gateway.sse import DONE_EVENT, encode_event, iter_events, map_chunks


def make_ctx(stream: bool = False) -> RequestContext:
    return RequestContext(
        request_id="r",
        started=0.0,
        endpoint="chat",
        policy=Policy(tenant="t"),
        key_id="k",
        body={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        model="m",
        stream=stream,
        client_headers={},
    )


class Recorder:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def handle(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        self.log.append(f"{self.name}>")
        response = await call_next(ctx)
        self.log.append(f"<{self.name}")
        return response


class Rewriter:
    name = "rewrite"

    async def handle(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        ctx.body = {
            **ctx.body,
            "messages": [{"role": "system", "content": "be brief"}, *ctx.body["messages"]],
        }
        ctx.decide(self.name, "injected")
        response = await call_next(ctx)
        data = response.json()
        response.set_json({**data, "seen_by_rewriter": True})
        return response


class ShortCircuit:
    name = "cache"

    async def handle(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        ctx.decide(self.name, "hit")
        return GatewayResponse.of_json({"cached": True})


class Upcase:
    name = "upcase"

    async def handle(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        response = await call_next(ctx)
        assert response.stream is not None

        def upper(chunk: dict) -> dict | None:
            content = chunk["choices"][0]["delta"].get("content")
            if content == "drop":
                return None
            if content:
                return {**chunk, "choices": [{"index": 0, "delta": {"content": content.upper()}}]}
            return chunk

        response.stream = map_chunks(response.stream, upper)
        return response


async def test_stages_run_in_order_around_the_terminal() -> None:
    log: list[str] = []
    seen: list[dict] = []

    async def terminal(ctx: RequestContext) -> GatewayResponse:
        log.append("upstream")
        seen.append(ctx.body)
        return GatewayResponse(raw=b'{"answer": 1}')

    handler = compose([Recorder("a", log), Rewriter(), Recorder("b", log)], terminal)
    ctx = make_ctx()
    response = await handler(ctx)
    assert log == ["a>", "b>", "upstream", "<b", "<a"]
    assert seen[0]["messages"][0] == {"role": "system", "content": "be brief"}
    assert orjson.loads(response.body()) == {"answer": 1, "seen_by_rewriter": True}
    assert [(d.stage, d.action) for d in ctx.decisions] == [("rewrite", "injected")]


async def test_short_circuit_never_calls_the_upstream() -> None:
    called = []

    async def terminal(ctx: RequestContext) -> GatewayResponse:
        called.append(True)
        return GatewayResponse.of_json({})

    log: list[str] = []
    response = await compose([Recorder("a", log), ShortCircuit(), Recorder("b", log)], terminal)(make_ctx())
    assert response.json() == {"cached": True} and called == [] and log == ["a>", "<a"]


async def _upstream_stream() -> AsyncIterator[bytes]:
    events = [
        encode_event({"choices": [{"index": 0, "delta": {"content": w}}]}) for w in ("hel", "drop", "lo")
    ]
    joined = b"".join(events) + DONE_EVENT
    # Arbitrary byte boundaries, as the network delivers them.
    for i in range(0, len(joined), 7):
        yield joined[i : i + 7]


async def test_stream_chunks_are_seen_rewritten_and_dropped() -> None:
    async def terminal(ctx: RequestContext) -> GatewayResponse:
        return GatewayResponse(stream=_upstream_stream())

    response = await compose([Upcase()], terminal)(make_ctx(stream=True))
    assert response.stream is not None
    events = [e async for e in iter_events(response.stream)]
    contents = [orjson.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert contents == ["HEL", "LO"] and events[-1] == DONE_EVENT


async def test_unchanged_chunks_are_relayed_byte_for_byte() -> None:
    original = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}],  "spacing":"kept"}\n\n'

    async def source() -> AsyncIterator[bytes]:
        yield original

    out = [e async for e in map_chunks(source(), lambda chunk: chunk)]
    assert out == [original]
