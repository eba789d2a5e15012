"""admission: rate limits, budgets and cost accounting, as one admit before the call and one settle after.

Before the call, every check that applies to the request is admitted in one state call (one
Redis round trip): requests and tokens per minute, per tenant, per key and per model (sliding
windows, see gateway.state.base), and a worst-case reservation against each USD budget (the
prompt's tokens plus the most the request may generate, at the model's price). A request over a
rate limit gets OpenAI's 429 (type "requests" or "tokens", code rate_limit_exceeded) with
Retry-After; over a budget the policy rejects (429 insufficient_quota, saying the budget, the
spend and the reset) or downgrades to a cheaper model.

After the call the settle replaces the estimates with what was used. While the request runs its
reservation's lease is renewed (gateway.state.leases); a settle the state store cannot take is
journalled and retried until it does (gateway.state.journal), and a request served while the store
was down (fail_open) is booked the same way, so the ledger ends up with every cost served.
Accounting is always on: every answer from a priced model is priced and booked per tenant, key,
model and day, with or without a budget, and `x-gateway-cost-usd` says what it cost (for a stream,
whose headers leave before its usage is known, the worst-case estimate, with
`x-gateway-cost-basis: estimate`).

Usage comes from the answer: a JSON body carries it, a stream's upstream is always asked for it
(the chat usage chunk is removed again for a client that did not ask), and without it the prompt
and the generated text are counted with the model's tokenizer. A stream relayed untouched is read
by its protocol's StreamTap, which parses only the events that carry usage.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from gateway.chain import Handler
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.policy import Policy
from gateway.pricing import Pricing, format_usd
from gateway.protocols import embeddings, wire_codec
from gateway.protocols.facts import AnswerFacts
from gateway.protocols.model import CompletionBuilder, Events, Usage
from gateway.protocols.sse import iter_events
from gateway.response import GatewayResponse
from gateway.retrieval.rerank import worst_case_tokens as rerank_worst_case
from gateway.services import Services, provider_embedding_model
from gateway.state.base import (
    BudgetCheck,
    BudgetState,
    RateCheck,
    RateKind,
    RateState,
    Settlement,
    SpendRecord,
    StateBackend,
    StateUnavailable,
    Ticket,
    Verdict,
    nanos,
)
from gateway.state.journal import SettleJournal
from gateway.state.leases import LeaseKeeper
from gateway.state.settings import BudgetPolicy, RateLimitPolicy
from gateway.state.spend import (
    LEDGER_GRACE_S,
    REPORT_RETENTION_S,
    day_end,
    format_reset,
    month_end,
    utc_day,
    utc_month,
)

NAME = "admission"
WINDOW_S = 60.0
log = logging.getLogger("rag_gateway.admission")


# -- rate-limit answers ---------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """OpenAI's reset format (Go durations): '120ms', '1s', '1.5s', '6m0s', '1h2m3s'."""
    if seconds <= 0:
        return "0s"
    ms = math.ceil(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms"
    hours, rest_ms = divmod(ms, 3_600_000)
    minutes, rest_ms = divmod(rest_ms, 60_000)
    secs = f"{rest_ms / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def tenant_and_key_limits(
    s: RateLimitPolicy, tenant: str, key_id: str
) -> list[tuple[int | None, RateKind, str, str]]:
    """(limit, kind, state key, who) of the tenant's and the key's own limits."""
    return [
        (s.rpm, "requests", f"{tenant}:rl:rpm", "the tenant"),
        (s.tpm, "tokens", f"{tenant}:rl:tpm", "the tenant"),
        (s.per_key_rpm, "requests", f"{tenant}:rl:k:{key_id}:rpm", f"key {key_id}"),
        (s.per_key_tpm, "tokens", f"{tenant}:rl:k:{key_id}:tpm", f"key {key_id}"),
    ]


async def admit_api_call(policy: Policy, key_id: str, state: StateBackend, what: str) -> None:
    """A Files, Vector Stores or MCP call that does work (an upload, an attach, a search) takes one
    request from the tenant's and the key's requests-per-minute limits, as a model call does: the
    same windows, so an agent cannot search past the limit its chat calls obey. Tokens per minute
    count model tokens only; a search spends none."""
    s = policy.rate_limit
    if not s.enabled:
        return
    tenant = "{" + policy.tenant + "}"
    checks = [
        RateCheck(key, limit, 1, WINDOW_S, kind, scope)
        for limit, kind, key, scope in tenant_and_key_limits(s, tenant, key_id)
        if limit and kind == "requests"
    ]
    if not checks:
        return
    try:
        verdict = await state.admit(checks, [])
    except StateUnavailable as exc:
        if s.on_state_error == "fail_closed":
            raise state_unavailable() from exc
        return
    if isinstance(verdict.denied, RateState):
        raise rate_limited(what, verdict.denied)


def tightest(states: list[RateState], kind: str) -> RateState | None:
    """The limit a client should watch: least remaining, then the longest reset."""
    of_kind = [s for s in states if s.check.kind == kind]
    if not of_kind:
        return None
    return min(of_kind, key=lambda s: (s.remaining, -s.reset_s))


def rate_limited(model: str, state: RateState) -> GatewayError:
    check = state.check
    kind = check.kind
    unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
    wait = format_duration(state.retry_after_s)
    if check.cost > check.limit:
        message = (
            f"Request too large for {model} for {check.scope} on {unit}: Limit {check.limit}, "
            f"Requested {check.cost}. The input or output tokens must be reduced in order to run "
            "successfully."
        )
    else:
        message = (
            f"Rate limit reached for {model} for {check.scope} on {unit}: Limit {check.limit}, "
            f"Used {state.used}, Requested {check.cost}. Please try again in {wait}."
        )
    retry_s = max(state.retry_after_s, 0.001)
    return GatewayError(
        429,
        message,
        type=kind,  # what OpenAI sends: "requests" or "tokens"
        code="rate_limit_exceeded",
        headers={"retry-after": str(math.ceil(retry_s)), "retry-after-ms": str(math.ceil(retry_s * 1000))},
    )


def insufficient_quota(state: BudgetState, now: float) -> GatewayError:
    check = state.check
    period = "daily" if check.period == "day" else "monthly"
    message = (
        f"You exceeded the {period} budget of {check.scope}: ${format_usd(check.limit_nanos)}. "
        f"Spent (including requests in flight): ${format_usd(state.spent_nanos)}; this request may cost up "
        f"to ${format_usd(check.amount_nanos)}. The budget resets in {format_reset(check.resets_at - now)} "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(check.resets_at))})."
    )
    return GatewayError(429, message, type="insufficient_quota", code="insufficient_quota")


def state_unavailable() -> GatewayError:
    return GatewayError(
        503,
        "Rate limits and budgets cannot be checked right now (the gateway's state store is "
        "unreachable), so this request was not served. Retry in a few seconds.",
        type="server_error",
        code="state_unavailable",
        headers={"retry-after": "1"},
    )


@dataclass(frozen=True, slots=True)
class SideModel:
    """A call the chain may make on the tenant's behalf (a reranker, a provider embedder), reserved
    with the request: the prompt (which holds the query) plus these tokens."""

    model: str
    extra_input_tokens: int
    output_tokens: int


def side_models(policy: Policy, services: Services) -> tuple[SideModel, ...]:
    if not policy.retrieval.enabled:
        return ()
    models = []
    rerank = policy.retrieval.rerank
    if rerank.model:
        models.append(SideModel(rerank.model, *rerank_worst_case(rerank.candidates)))
    embedding = provider_embedding_model(services.config)
    if embedding is not None:
        models.append(SideModel(embedding, 0, 0))
    return tuple(models)


class Admitted:
    """What the admit reserved for one request, and whether it has been settled."""

    __slots__ = ("prompt_tokens", "reserved_nanos", "settled", "ticket")

    def __init__(self) -> None:
        self.ticket: Ticket | None = None
        self.reserved_nanos = 0
        self.prompt_tokens: dict[str, int] = {}  # per model: a downgrade may change the tokenizer
        self.settled = False


class AdmissionStage:
    name = NAME

    def __init__(
        self,
        rate: RateLimitPolicy,
        budget: BudgetPolicy,
        state: StateBackend,
        pricing: Pricing,
        leases: LeaseKeeper,
        journal: SettleJournal,
        side: tuple[SideModel, ...] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.side = side
        self.rate = rate if rate.enabled else None
        self.budget = budget if budget.enabled else None
        self.state = state
        self.pricing = pricing
        self.leases = leases
        self.journal = journal
        self.clock = clock
        self.counts_tokens = self.budget is not None or (self.rate is not None and self.rate.limits_tokens())
        self.fail_closed_rate = self.rate is not None and self.rate.on_state_error == "fail_closed"
        self.fail_closed_budget = self.budget is not None and self.budget.on_state_error == "fail_closed"

    # -- the estimates ----------------------------------------------------------------------------

    def prompt_tokens(self, ctx: RequestContext, admitted: Admitted) -> int:
        model = ctx.model
        count = admitted.prompt_tokens.get(model)
        if count is None:
            request = ctx.request
            if request.protocol == "embeddings":
                count = sum(self.pricing.count_text(model, t) for t in embeddings.input_texts(request.body))
            else:
                count = self.pricing.count_prompt(model, request.body)
            admitted.prompt_tokens[model] = count
        return count

    def worst_case_nanos(self, ctx: RequestContext, admitted: Admitted) -> int:
        prompt = self.prompt_tokens(ctx, admitted)
        if ctx.request.protocol == "embeddings":
            return self.pricing.cost_nanos(ctx.model, prompt, 0)
        default = self.budget.default_max_output_tokens if self.budget is not None else 4096
        most_out = self.pricing.max_output_tokens(ctx.model, ctx.request, default)
        side = sum(
            self.pricing.cost_nanos(m.model, prompt + m.extra_input_tokens, m.output_tokens)
            for m in self.side
        )
        return self.pricing.cost_nanos(ctx.model, prompt, most_out) + side

    def rate_checks(self, ctx: RequestContext, admitted: Admitted) -> list[RateCheck]:
        s = self.rate
        if s is None:
            return []
        tenant = "{" + ctx.tenant + "}"  # a hash tag: all of a tenant's keys on one cluster slot
        tokens = self.prompt_tokens(ctx, admitted) if s.limits_tokens() else 0
        per_model = s.per_model.get(ctx.model)
        wanted = tenant_and_key_limits(s, tenant, ctx.key_id)
        if per_model is not None:
            wanted += [
                (per_model.rpm, "requests", f"{tenant}:rl:m:{ctx.model}:rpm", f"model {ctx.model}"),
                (per_model.tpm, "tokens", f"{tenant}:rl:m:{ctx.model}:tpm", f"model {ctx.model}"),
            ]
        return [
            RateCheck(key, limit, 1 if kind == "requests" else tokens, WINDOW_S, kind, scope)
            for limit, kind, key, scope in wanted
            if limit
        ]

    def budget_checks(self, ctx: RequestContext, admitted: Admitted) -> list[BudgetCheck]:
        s = self.budget
        if s is None:
            return []
        amount = self.worst_case_nanos(ctx, admitted)
        now = self.clock()
        tenant = "{" + ctx.tenant + "}"
        day, month = utc_day(now), utc_month(now)
        ends = {"day": day_end(now), "month": month_end(now)}
        per_key, key_scope = f"{tenant}:usd:k:{ctx.key_id}", f"key {ctx.key_id}"
        wanted = [
            (s.daily_usd, "day", f"{tenant}:usd:day:{day}", "the tenant"),
            (s.monthly_usd, "month", f"{tenant}:usd:month:{month}", "the tenant"),
            (s.per_key_daily_usd, "day", f"{per_key}:day:{day}", key_scope),
            (s.per_key_monthly_usd, "month", f"{per_key}:month:{month}", key_scope),
        ]
        checks = []
        for limit_usd, period, key, scope in wanted:
            if limit_usd is None:
                continue
            limit = nanos(limit_usd)
            alert = None if s.soft_alert_ratio is None else int(limit * s.soft_alert_ratio)
            checks.append(
                BudgetCheck(
                    key, limit, amount, ends[period] + LEDGER_GRACE_S, alert, scope, period, ends[period]
                )
            )
        return checks

    # -- before the call --------------------------------------------------------------------------

    async def admit(self, ctx: RequestContext, admitted: Admitted) -> None:
        rates = self.rate_checks(ctx, admitted)
        budgets = self.budget_checks(ctx, admitted)
        if not rates and not budgets:
            return
        verdict = await self._admit_once(ctx, rates, budgets)
        if verdict is not None and not verdict.allowed and isinstance(verdict.denied, BudgetState):
            verdict = await self._downgrade(ctx, admitted, verdict)
        if verdict is None:
            # Served without the store (fail_open): nothing is reserved, and the settle books the
            # whole cost to the budgets, through the journal until the store is back.
            admitted.ticket = Ticket.unreserved(tuple(budgets))
            return
        self._report_rates(ctx, verdict)
        denied = verdict.denied
        if isinstance(denied, RateState):
            ctx.decide(
                NAME, "reject", kind=denied.check.kind, scope=denied.check.scope, limit=denied.check.limit,
                used=denied.used, requested=denied.check.cost, retry_after_s=round(denied.retry_after_s, 3),
            )  # fmt: skip
            raise rate_limited(ctx.model, denied)
        if isinstance(denied, BudgetState):
            ctx.decide(
                NAME, "reject", budget=denied.check.key, limit_nanos=denied.check.limit_nanos,
                spent_nanos=denied.spent_nanos, requested_nanos=denied.check.amount_nanos,
            )  # fmt: skip
            raise insufficient_quota(denied, self.clock())
        admitted.ticket = verdict.ticket
        if verdict.ticket is not None:
            self.leases.hold(verdict.ticket)
        admitted.reserved_nanos = max((b.check.amount_nanos for b in verdict.budgets), default=0)
        self._alerts(ctx, verdict)
        detail: dict[str, Any] = {s.check.key.partition(":rl:")[2]: s.remaining for s in verdict.rates}
        ctx.decide(NAME, "allow", remaining=detail, reserved_nanos=admitted.reserved_nanos)

    async def _admit_once(
        self, ctx: RequestContext, rates: list[RateCheck], budgets: list[BudgetCheck]
    ) -> Verdict | None:
        try:
            return await self.state.admit(rates, budgets)
        except StateUnavailable as exc:
            closed = (bool(rates) and self.fail_closed_rate) or (bool(budgets) and self.fail_closed_budget)
            ctx.decide(NAME, "fail_closed" if closed else "fail_open", error=str(exc))
            if closed:
                raise state_unavailable() from exc
            return None

    async def _downgrade(self, ctx: RequestContext, admitted: Admitted, verdict: Verdict) -> Verdict | None:
        settings = self.budget
        assert settings is not None and isinstance(verdict.denied, BudgetState)
        target = settings.downgrade_to
        if settings.on_exceed != "downgrade" or not target or target == ctx.model:
            return verdict
        original = ctx.model
        ctx.request.set_model(target)
        ctx.response_headers["x-gateway-downgraded-from"] = original
        ctx.decide(
            NAME, "downgrade", from_model=original, to_model=target,
            budget=verdict.denied.check.key, spent_nanos=verdict.denied.spent_nanos,
        )  # fmt: skip
        log.info("request %s: %s downgraded to %s (budget)", ctx.request_id, original, target)
        return await self._admit_once(ctx, self.rate_checks(ctx, admitted), self.budget_checks(ctx, admitted))

    def _report_rates(self, ctx: RequestContext, verdict: Verdict) -> None:
        headers = ctx.response_headers
        for kind in ("requests", "tokens"):
            state = tightest(verdict.rates, kind)
            if state is not None:
                headers[f"x-ratelimit-limit-{kind}"] = str(state.check.limit)
                headers[f"x-ratelimit-remaining-{kind}"] = str(state.remaining)
                headers[f"x-ratelimit-reset-{kind}"] = format_duration(state.reset_s)

    def _alerts(self, ctx: RequestContext, verdict: Verdict) -> None:
        for state in verdict.budgets:
            if state.alert:
                check = state.check
                ratio = (self.budget.soft_alert_ratio or 0) if self.budget is not None else 0
                log.warning(
                    "budget alert: tenant %r, %s %s budget: spend $%s has crossed %.0f%% of $%s",
                    ctx.tenant, check.scope, check.period, format_usd(state.spent_nanos),
                    ratio * 100, format_usd(check.limit_nanos),
                )  # fmt: skip
                ctx.decide(NAME, "soft_alert", budget=check.key, spent_nanos=state.spent_nanos)

    # -- the request ------------------------------------------------------------------------------

    async def handle(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        admitted = Admitted()
        await self.admit(ctx, admitted)
        try:
            response = await call_next(ctx)
        except BaseException:
            await self._settle_shielded(ctx, admitted, None)
            raise
        if response.status != 200:
            await self.settle(ctx, admitted, None)
            return response
        if not response.is_stream:
            facts = self._json_facts(response)
            await self.settle(ctx, admitted, facts, await self._usage(ctx, admitted, facts, None))
            self._cost_headers(ctx, ctx.cost_nanos if ctx.served_model else 0, "actual")
            return response
        if ctx.served_model is not None:
            self._cost_headers(ctx, self._estimate(ctx, admitted), "estimate")
        else:
            self._cost_headers(ctx, 0, "actual")  # a stage answered: nothing was generated
        if response.is_raw and response.wire == ctx.protocol:
            strip = not ctx.request.client_wants_usage and response.wire in ("chat", "completions")
            tap = wire_codec(response.wire).StreamTap(strip)  # type: ignore[attr-defined]
            response.map_bytes(lambda stream: self._tap(ctx, admitted, stream, tap))
        else:
            response.map_events(lambda events: self._watch(ctx, admitted, events))
        return response

    def _json_facts(self, response: GatewayResponse) -> AnswerFacts:
        if response.wire == "embeddings":
            return AnswerFacts(usage=embeddings.usage_of_body(response.json()))
        return AnswerFacts.of_completion(response.completion())

    async def _tap(
        self, ctx: RequestContext, admitted: Admitted, stream: AsyncIterator[bytes], tap: Any
    ) -> AsyncIterator[bytes]:
        try:
            async for event in iter_events(stream):
                kept = tap.feed(event)
                if kept is not None:
                    yield kept
        finally:
            facts: AnswerFacts = tap.facts
            text = None if facts.usage is not None else await tap.generated_text()
            usage = await self._usage(ctx, admitted, facts, text)
            await self._settle_shielded(ctx, admitted, facts, usage)

    async def _watch(self, ctx: RequestContext, admitted: Admitted, events: Events) -> Events:
        facts = AnswerFacts()
        builder = CompletionBuilder()
        try:
            async for event in events:
                facts.see(event)
                if facts.usage is None:
                    builder.feed(event)
                yield event
        finally:
            text = None if facts.usage is not None else builder.text_so_far()
            usage = await self._usage(ctx, admitted, facts, text)
            await self._settle_shielded(ctx, admitted, facts, usage)

    async def _usage(
        self, ctx: RequestContext, admitted: Admitted, facts: AnswerFacts, text: str | None
    ) -> Usage | None:
        """The answer's usage, else the prompt and the generated text counted; None when no model ran."""
        if facts.usage is not None:
            return facts.usage
        if ctx.served_model is None:
            return None  # answered by a stage (a cache hit, a refusal): nothing was generated
        output = self.pricing.count_text(ctx.served_model or ctx.model, text or "") if text else 0
        return Usage(self.prompt_tokens(ctx, admitted), output)

    def _estimate(self, ctx: RequestContext, admitted: Admitted) -> int | None:
        if admitted.reserved_nanos:
            return admitted.reserved_nanos
        if not self.pricing.price(ctx.served_model or ctx.model).known:
            return None
        return self.worst_case_nanos(ctx, admitted)

    def _cost_headers(self, ctx: RequestContext, cost: int | None, basis: str) -> None:
        if cost is None:
            return
        ctx.response_headers["x-gateway-cost-usd"] = format_usd(cost)
        ctx.response_headers["x-gateway-cost-basis"] = basis

    # -- after the call ---------------------------------------------------------------------------

    async def _settle_shielded(
        self,
        ctx: RequestContext,
        admitted: Admitted,
        facts: AnswerFacts | None,
        usage: Usage | None = None,
    ) -> None:
        # Shielded: a client hanging up must not cancel the settlement half-way.
        settle = asyncio.ensure_future(self.settle(ctx, admitted, facts, usage))
        try:
            await asyncio.shield(settle)
        except asyncio.CancelledError:
            pass

    async def settle(
        self, ctx: RequestContext, admitted: Admitted, facts: AnswerFacts | None, usage: Usage | None = None
    ) -> None:
        """Book what was used, once. `usage` None: no model generated anything (the call failed, or a
        stage answered), so the reserved money is released and the token estimate stays."""
        if admitted.settled:
            return
        admitted.settled = True
        if facts is not None:
            ctx.response_facts = facts
            if facts.first_output is not None:
                ctx.first_token_at = facts.first_output
                ctx.output_events = facts.output_events
        model = ctx.served_model or ctx.model
        cost: int | None = None
        if usage is not None:
            ctx.usage = usage
            price = self.pricing.price(model)
            if price.known:
                cost = self.pricing.usage_nanos(model, usage)
            else:
                ctx.decide(NAME, "unpriced", model=model)
        for call in ctx.side_calls:
            if self.pricing.price(call.model).known:
                cost = (cost or 0) + self.pricing.usage_nanos(call.model, call.usage)
        ctx.cost_nanos = cost
        ticket = admitted.ticket
        if ticket is None and cost is None:
            self._decide_settled(ctx, model, usage, cost)
            return
        now = time.time()
        records = (
            (SpendRecord(ctx.tenant, utc_day(now), model, ctx.key_id, int(now) + REPORT_RETENTION_S),)
            if cost is not None
            else ()
        )
        if ticket is not None:
            self.leases.release(ticket)
        settlement = Settlement(
            ctx.tenant,
            ticket or Ticket.unreserved(),
            None if usage is None else usage.total_tokens,
            0 if cost is None else cost,
            records,
        )
        if not await self.journal.settle(settlement):
            ctx.decide(NAME, "settle_journalled", pending=len(self.journal.pending))
        self._decide_settled(ctx, model, usage, cost)

    def _decide_settled(self, ctx: RequestContext, model: str, usage: Usage | None, cost: int | None) -> None:
        detail: dict[str, Any] = {"model": model}
        if usage is not None:
            detail.update(prompt_tokens=usage.input_tokens, completion_tokens=usage.output_tokens)
        if cost is not None:
            detail["cost_nanos"] = cost
        ctx.decide(NAME, "settled" if usage is not None else "released", **detail)


def build(policy: Policy, services: Services) -> AdmissionStage:
    """Always built: accounting runs for every tenant, limits and budgets where the policy has them."""
    return AdmissionStage(
        policy.rate_limit, policy.budget, services.state, services.pricing, services.leases, services.journal,
        side_models(policy, services),
    )  # fmt: skip
