"""The chain mechanism: stages edit requests, short-circuit, and see answers and stream events."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from gateway.chain import Handler, compose
from gateway.context import RequestContext
from gateway.policy import Policy
from gateway.protocols import chat
from gateway.protocols.model import Choice, Completion, Events, TextDelta
from gateway.protocols.sse import DONE_EVENT, encode_event
from gateway.response import GatewayResponse


def make_ctx(stream: bool = False) -> RequestContext:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return RequestContext.internal(Policy(tenant="t"), body, "r", "k")


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
        ctx.request.add_system("be brief")
        ctx.decide(self.name, "injected")
        response = await call_next(ctx)
        completion = response.completion()
        completion.choices[0].text = (completion.choices[0].text or "").upper()
        response.set_completion(completion)
        return response


class ShortCircuit:
    name = "cache"

    async def handle(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        ctx.decide(self.name, "hit")
        return GatewayResponse.answer(
            Completion("c", "m", 0, [Choice(0, "cached", finish_reason="stop")]), False
        )


class Upcase:
    name = "upcase"

    async def handle(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        response = await call_next(ctx)

        async def upper(events: Events) -> Events:
            async for event in events:
                if isinstance(event, TextDelta):
                    if event.text == "drop":
                        continue
                    event = TextDelta(event.text.upper(), event.choice)
                yield event

        response.map_events(upper)
        return response


def upstream_json(text: str) -> bytes:
    return orjson.dumps(
        {
            "id": "u",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


async def test_stages_run_in_order_around_the_terminal() -> None:
    log: list[str] = []
    seen: list[list] = []

    async def terminal(ctx: RequestContext) -> GatewayResponse:
        log.append("upstream")
        seen.append(ctx.request.messages)
        return GatewayResponse(raw=upstream_json("answer"))

    handler = compose([Recorder("a", log), Rewriter(), Recorder("b", log)], terminal)
    ctx = make_ctx()
    response = await handler(ctx)
    assert log == ["a>", "b>", "upstream", "<b", "<a"]
    assert seen[0][0] == {"role": "system", "content": "be brief"}
    assert ctx.request.system_added == ("be brief",)
    # The stage changed the answer: the wire bytes are stale and the edge re-encodes.
    assert not response.is_raw and response.raw is None
    assert (
        chat.encode_json(response.completion(), ctx.request)["choices"][0]["message"]["content"] == "ANSWER"
    )
    assert [(d.stage, d.action) for d in ctx.decisions] == [("rewrite", "injected")]


async def test_short_circuit_never_calls_the_upstream() -> None:
    called = []

    async def terminal(ctx: RequestContext) -> GatewayResponse:
        called.append(True)
        return GatewayResponse(raw=upstream_json("x"))

    log: list[str] = []
    response = await compose([Recorder("a", log), ShortCircuit(), Recorder("b", log)], terminal)(make_ctx())
    assert response.completion().text == "cached" and called == [] and log == ["a>", "<a"]


async def _upstream_stream() -> AsyncIterator[bytes]:
    events = [
        encode_event({"id": "u", "model": "m", "choices": [{"index": 0, "delta": {"content": w}}]})
        for w in ("hel", "drop", "lo")
    ]
    joined = b"".join(events) + DONE_EVENT
    # Arbitrary byte boundaries, as the network delivers them.
    for i in range(0, len(joined), 7):
        yield joined[i : i + 7]


async def test_stream_events_are_seen_rewritten_and_dropped() -> None:
    async def terminal(ctx: RequestContext) -> GatewayResponse:
        return GatewayResponse(stream=_upstream_stream())

    ctx = make_ctx(stream=True)
    response = await compose([Upcase()], terminal)(ctx)
    chunks = [c async for c in chat.encode_stream(response.events(), ctx.request, lambda e: None)]
    contents = [orjson.loads(c[6:])["choices"][0]["delta"].get("content") for c in chunks if c != DONE_EVENT]
    assert contents == ["", "HEL", "LO"] and chunks[-1] == DONE_EVENT


async def test_a_stream_no_stage_looks_at_stays_wire_bytes() -> None:
    original = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}],  "spacing":"kept"}\n\n' + DONE_EVENT

    async def source() -> AsyncIterator[bytes]:
        yield original

    async def terminal(ctx: RequestContext) -> GatewayResponse:
        return GatewayResponse(stream=source())

    response = await compose([Recorder("a", [])], terminal)(make_ctx(stream=True))
    assert response.is_raw and response.stream is not None
    assert b"".join([c async for c in response.stream]) == original
