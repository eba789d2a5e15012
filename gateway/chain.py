"""The middleware chain: ordered stages around the upstream call, composed once per policy.

A stage is an object with a `name` and `async handle(ctx, call_next)`. It may rewrite
`ctx.body` before calling `call_next`, return its own response without calling it (a cache hit,
a refusal, a block), or change the response on the way back, wrapping `response.stream` to see
each chunk of a stream. This is the same onion shape as ASGI middleware, minus the ASGI plumbing.

Each stage runs inside a thin wrapper that records its own time (excluding the stages after
it) in `ctx.stage_ms` and, when tracing is on, a `gateway.<stage>` span carrying its decisions.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Protocol

from opentelemetry.trace import Tracer

from gateway.context import RequestContext
from gateway.response import GatewayResponse
from gateway.telemetry import scalar_attributes

Handler = Callable[[RequestContext], Awaitable[GatewayResponse]]


class Stage(Protocol):
    name: str

    async def handle(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse: ...


# The chain of a request that carries the Responses API's file_search tool (see middleware).
FILE_SEARCH_CHAIN = "file_search"


def compose(stages: Sequence[Stage], terminal: Handler, tracer: Tracer | None = None) -> Handler:
    """One callable running every stage in order, then the terminal handler (the upstream call)."""
    handler: Handler = terminal
    for stage in reversed(stages):
        handler = partial(run_stage, stage, handler, tracer)
    return handler


async def run_stage(
    stage: Stage, call_next: Handler, tracer: Tracer | None, ctx: RequestContext
) -> GatewayResponse:
    started = time.perf_counter()
    downstream = 0.0

    async def timed_next(c: RequestContext) -> GatewayResponse:
        nonlocal downstream
        entered = time.perf_counter()
        try:
            return await call_next(c)
        finally:
            downstream += time.perf_counter() - entered

    if tracer is None:
        try:
            return await stage.handle(ctx, timed_next)
        finally:
            ctx.stage_ms[stage.name] = (time.perf_counter() - started - downstream) * 1000
    first_decision = len(ctx.decisions)
    with tracer.start_as_current_span(
        f"gateway.{stage.name}", attributes={"gateway.tenant": ctx.tenant}
    ) as span:
        try:
            return await stage.handle(ctx, timed_next)
        finally:
            ctx.stage_ms[stage.name] = (time.perf_counter() - started - downstream) * 1000
            for decision in ctx.decisions[first_decision:]:
                if decision.stage == stage.name:
                    span.set_attribute(f"gateway.{stage.name}.action", decision.action)
                    span.set_attributes(scalar_attributes(f"gateway.{stage.name}", decision.detail))
