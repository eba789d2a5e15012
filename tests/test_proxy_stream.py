"""Relaying a stream to the client: every stage's clean-up runs, whenever the client hangs up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.context import RequestContext
from gateway.edge import ChatClient
from gateway.errors import StreamInterrupted
from gateway.exchange import Exchange
from gateway.policy import Policy
from gateway.proxy import send_stream as relay
from gateway.response import GatewayResponse

CHAT = ChatClient()


def make_ctx() -> RequestContext:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    return RequestContext.internal(Policy(tenant="t"), body, "r", "k")


async def send_stream(ctx: RequestContext, response: GatewayResponse, send: Any, exchange: Exchange) -> None:
    await relay(ctx, response, send, exchange, CHAT)


class Sent(list):
    """An ASGI `send` that keeps every message."""

    async def __call__(self, message: dict[str, Any]) -> None:
        self.append(message)


class Tracked:
    """A stage's stream wrapper: its finally is where usage is settled and connections are freed."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.cleaned_up = False
        self.sent = 0

    async def stream(self) -> AsyncIterator[bytes]:
        try:
            for chunk in self.chunks:
                self.sent += 1
                yield chunk
        finally:
            self.cleaned_up = True


@pytest.mark.parametrize("hang_up_at", ["http.response.start", "first body", "later body"])
async def test_a_client_hanging_up_runs_the_streams_clean_up(hang_up_at: str) -> None:
    tracked = Tracked([b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"])
    bodies = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal bodies
        if message["type"] == "http.response.body":
            bodies += 1
        at = (
            message["type"]
            if message["type"] == "http.response.start"
            else ("first body" if bodies == 1 else "later body")
        )
        if at == hang_up_at:
            raise OSError("client went away")

    exchange = Exchange()
    await send_stream(make_ctx(), GatewayResponse(stream=tracked.stream()), send, exchange)
    # Right away, not when the garbage collector finds the generator; logged as a disconnect.
    assert tracked.cleaned_up
    assert exchange.status == 499 and exchange.error and "client disconnected" in exchange.error


async def test_a_cancelled_request_still_closes_the_stream() -> None:
    tracked = Tracked([b"data: 1\n\n"] * 3)
    started = asyncio.Event()

    async def slow_send(message: dict[str, Any]) -> None:
        started.set()
        await asyncio.sleep(10)

    task = asyncio.ensure_future(
        send_stream(make_ctx(), GatewayResponse(stream=tracked.stream()), slow_send, Exchange())
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tracked.cleaned_up and tracked.sent == 1


async def test_a_complete_stream_is_relayed_in_order() -> None:
    tracked = Tracked([b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"])
    sent = Sent()
    await send_stream(make_ctx(), GatewayResponse(stream=tracked.stream()), sent, Exchange())
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert [m.get("body") for m in sent[1:]] == [b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n", b""]
    assert sent[-1]["more_body"] is False and tracked.cleaned_up


async def test_an_empty_chunk_mid_stream_does_not_end_it() -> None:
    tracked = Tracked([b"data: 1\n\n", b"", b"data: [DONE]\n\n"])
    sent = Sent()
    await send_stream(make_ctx(), GatewayResponse(stream=tracked.stream()), sent, Exchange())
    assert [m.get("body") for m in sent[1:]] == [b"data: 1\n\n", b"data: [DONE]\n\n", b""]


async def test_a_failing_stream_ends_with_an_error_event() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        raise StreamInterrupted("the upstream stream broke")

    sent = Sent()
    exchange = Exchange()
    await send_stream(make_ctx(), GatewayResponse(stream=broken()), sent, exchange)
    assert b"the upstream stream broke" in sent[-2]["body"] and sent[-1]["more_body"] is False
    assert exchange.error == "stream_interrupted: the upstream stream broke"
