"""One admission per request, shared by the rate-limit and budget stages.

Both stages put their checks on the request's `Admission`; the innermost of them runs them all in
a single `state.admit` call (one Redis round trip), and after the response one `settle` replaces
the estimates (prompt tokens, worst-case cost) with the real usage. The rate-limit stage defers
to a budget stage that comes after it; a budget stage that came first has already run its own.

Usage: a JSON answer carries it. For a stream the upstream is asked for it
(`stream_options.include_usage`) and the usage chunk is removed again if the client did not ask;
without one, the streamed text is counted with the model's tokenizer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import Counter

from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.pricing import Pricing
from gateway.response import GatewayResponse
from gateway.sse import map_chunks
from gateway.state.base import BudgetCheck, SpendRecord, StateBackend, StateUnavailable, Ticket, Verdict
from gateway.state.spend import REPORT_RETENTION_S, utc_day

log = logging.getLogger("rag_gateway.state")
KEY = "admission"  # ctx.state key

STATE_ERRORS = Counter(
    "rag_gateway_state_unavailable_total",
    "Requests whose limit or budget checks could not reach the state store, by what was done",
    ["action"],  # fail_open | fail_closed | settle_lost
)


class RatePart(Protocol):
    """What the rate-limit stage contributes to an admission."""

    fail_closed: bool

    def checks(self, ctx: RequestContext, admission: Admission) -> list[Any]: ...

    def on_verdict(self, ctx: RequestContext, verdict: Verdict, enforce: bool) -> None: ...


CostFn = Callable[[str, int, int], int]  # (model, prompt tokens, completion tokens) -> nano-dollars


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Admission:
    state: StateBackend
    pricing: Pricing
    rate: RatePart | None = None
    rate_done: bool = False  # the rate checks were admitted (or skipped by fail_open)
    budget_seen: bool = False  # a budget stage has run its admission already
    cost_fn: CostFn | None = None  # set by the budget stage: spend is settled and reported
    tickets: list[Ticket] = field(default_factory=list)
    usage: Usage | None = None
    cost_nanos: int | None = None  # the settled cost, once known
    client_wants_usage: bool = True
    _prompt_tokens: dict[str, int] = field(default_factory=dict)
    _tracked: bool = False
    _finished: bool = False

    def prompt_tokens(self, ctx: RequestContext) -> int:
        """The prompt counted once per model (a downgrade may change the tokenizer)."""
        count = self._prompt_tokens.get(ctx.model)
        if count is None:
            count = self.pricing.count_prompt(ctx.model, ctx.body)
            self._prompt_tokens[ctx.model] = count
        return count

    # -- before the call ------------------------------------------------------------------------

    async def flush(
        self,
        ctx: RequestContext,
        budgets: list[BudgetCheck] | None = None,
        budget_fail_closed: bool = False,
        enforce: bool = True,
    ) -> Verdict | None:
        """Admit every pending check at once. Raises 429 for a rate limit and 503 when the state
        store is down and a participating policy says fail_closed; None when nothing was checked."""
        budgets = budgets or []
        rate = self.rate if self.rate is not None and not self.rate_done else None
        rates = rate.checks(ctx, self) if rate is not None else []
        if not rates and not budgets:
            self.rate_done = self.rate_done or rate is not None
            return None
        try:
            verdict = await self.state.admit(rates, budgets)
        except StateUnavailable as exc:
            closed = (rate is not None and rate.fail_closed) or (bool(budgets) and budget_fail_closed)
            action = "fail_closed" if closed else "fail_open"
            STATE_ERRORS.labels(action).inc()
            ctx.decide("state", action, error=str(exc))
            if closed and enforce:
                raise GatewayError(
                    503,
                    "Rate limits and budgets cannot be checked right now (the gateway's state store is "
                    "unreachable), so this request was not served. Retry in a few seconds.",
                    type="server_error",
                    code="state_unavailable",
                    headers={"retry-after": "1"},
                ) from exc
            self.rate_done = self.rate_done or rate is not None
            return None
        if verdict.allowed:
            self.rate_done = self.rate_done or rate is not None
            assert verdict.ticket is not None
            self.tickets.append(verdict.ticket)
            if any(c.kind == "tokens" for c in rates) or budgets:
                self._ask_for_usage(ctx)
        if rate is not None:
            rate.on_verdict(ctx, verdict, enforce)
        return verdict

    def _ask_for_usage(self, ctx: RequestContext) -> None:
        if not ctx.stream:
            return
        options = ctx.body.get("stream_options")
        options = dict(options) if isinstance(options, dict) else {}
        if options.get("include_usage"):
            return
        self.client_wants_usage = False
        options["include_usage"] = True
        ctx.body = {**ctx.body, "stream_options": options}

    # -- after the call -------------------------------------------------------------------------

    async def track(self, ctx: RequestContext, response: GatewayResponse) -> GatewayResponse:
        """Settle from a JSON answer now, or from a stream when it ends (once per request)."""
        if self._tracked or self._finished:
            return response
        self._tracked = True
        if response.status != 200:
            await self.finish(ctx, None)
        elif response.stream is not None:
            response.stream = self._watch(ctx, response.stream)
        else:
            await self.finish(ctx, self._json_usage(ctx, response))
        return response

    def _json_usage(self, ctx: RequestContext, response: GatewayResponse) -> Usage:
        data = response.json()
        usage = data.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            return Usage(usage["prompt_tokens"], int(usage.get("completion_tokens") or 0))
        text = "".join(
            str((c.get("message") or {}).get("content") or "")
            for c in data.get("choices") or []
            if isinstance(c, dict)
        )
        return Usage(self.prompt_tokens(ctx), self.pricing.count_text(ctx.model, text))

    async def _watch(self, ctx: RequestContext, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        seen: dict[str, Any] = {}
        pieces: list[str] = []
        strip = not self.client_wants_usage

        def look(chunk: dict[str, Any]) -> dict[str, Any] | None:
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                seen["usage"] = usage
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if isinstance(delta, dict):
                    if delta.get("content"):
                        pieces.append(str(delta["content"]))
                    for call in delta.get("tool_calls") or ():
                        function = call.get("function") if isinstance(call, dict) else None
                        if isinstance(function, dict) and function.get("arguments"):
                            pieces.append(str(function["arguments"]))
            if strip and "usage" in chunk:
                # The client did not ask for usage: drop the usage-only chunk, and the usage field
                # OpenAI adds to every other chunk once include_usage is on.
                if not chunk.get("choices"):
                    return None
                return {k: v for k, v in chunk.items() if k != "usage"}
            return chunk

        try:
            async for event in map_chunks(stream, look):
                yield event
        finally:
            usage = seen.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
                final = Usage(usage["prompt_tokens"], int(usage.get("completion_tokens") or 0))
            else:
                final = Usage(self.prompt_tokens(ctx), self.pricing.count_text(ctx.model, "".join(pieces)))
            # Shielded: a client hanging up must not cancel the settlement half-way.
            settle = asyncio.ensure_future(self.finish(ctx, final))
            try:
                await asyncio.shield(settle)
            except asyncio.CancelledError:
                pass

    async def finish(self, ctx: RequestContext, usage: Usage | None) -> None:
        """Settle every ticket once. `usage` None: the call failed, so release the reserved money
        and keep the token estimate (the prompt was sent)."""
        if self._finished:
            return
        self._finished = True
        self.usage = usage
        model = served_model(ctx)
        cost: int | None = None
        if self.cost_fn is not None:
            cost = 0 if usage is None else self.cost_fn(model, usage.prompt_tokens, usage.completion_tokens)
        self.cost_nanos = cost
        tokens = None if usage is None else usage.total
        for ticket in self.tickets:
            record = None
            if ticket.budgets and usage is not None and cost is not None:
                now = time.time()
                expires = int(now) + REPORT_RETENTION_S
                record = SpendRecord(ctx.tenant, utc_day(now), model, ctx.key_id, expires)
            try:
                await self.state.settle(ticket, tokens, cost, record)
            except StateUnavailable as exc:
                STATE_ERRORS.labels("settle_lost").inc()
                log.warning(
                    "request %s: usage could not be settled (%s); its reservation stays counted",
                    ctx.request_id,
                    exc,
                )
        # The request log and the metrics read these from the context.
        if usage is not None and ctx.usage is None:
            ctx.usage = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                         "total_tokens": usage.total}
        if cost is not None:
            ctx.cost_usd = cost / 1e9
        detail: dict[str, Any] = {"model": model}
        if usage is not None:
            detail.update(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
        if cost is not None:
            detail["cost_nanos"] = cost
        ctx.decide("usage", "settled" if usage is not None else "released", **detail)


def served_model(ctx: RequestContext) -> str:
    """The public model that answered (a fallback may have), else the one asked for."""
    for attempt in reversed(ctx.attempts):
        if attempt.outcome == "ok":
            return attempt.model
    return ctx.model


def admission_for(ctx: RequestContext, state: StateBackend, pricing: Pricing) -> Admission:
    admission = ctx.state.get(KEY)
    if admission is None:
        admission = Admission(state, pricing)
        ctx.state[KEY] = admission
    return admission
