"""The middleware chain: ordered stages around the upstream call, composed once per policy.

A stage is an object with a `name` and `async handle(ctx, call_next)`. It may rewrite
`ctx.body` before calling `call_next`, return its own response without calling it (a cache hit,
a refusal, a block), or change the response on the way back, wrapping `response.stream` to see
each chunk of a stream. This is the same onion shape as ASGI middleware, minus the ASGI plumbing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Protocol

from gateway.context import RequestContext
from gateway.response import GatewayResponse

Handler = Callable[[RequestContext], Awaitable[GatewayResponse]]


class Stage(Protocol):
    name: str

    async def handle(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse: ...


def compose(stages: Sequence[Stage], terminal: Handler) -> Handler:
    """One callable running every stage in order, then the terminal handler (the upstream call)."""
    handler: Handler = terminal
    for stage in reversed(stages):
        handler = partial(stage.handle, call_next=handler)
    return handler
