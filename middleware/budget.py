"""budget: USD per UTC day and month, per tenant and per key, reserved before the call.

Before the call the worst case is reserved: the prompt's tokens plus the most the request may
generate (its max_tokens / max_completion_tokens, else the model's output limit from the price
map), at the model's price. If that would cross a budget the policy rejects (429
insufficient_quota, saying the budget, the spend and when it resets) or downgrades to a cheaper
model. After the call the reservation is replaced by the real cost (reserve-then-settle), so
concurrent requests cannot overspend together. `x-gateway-cost-usd` is on every response: the
real cost for JSON; for a stream, whose headers leave before its usage is known, the reserved
worst case (`x-gateway-cost-basis` says which).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from gateway.chain import Handler
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.policy import Policy
from gateway.pricing import Pricing, format_usd
from gateway.response import GatewayResponse
from gateway.services import Services
from gateway.state.admission import Admission, admission_for
from gateway.state.base import BudgetCheck, BudgetState, StateBackend, Verdict, nanos
from gateway.state.settings import BudgetPolicy
from gateway.state.spend import LEDGER_GRACE_S, day_end, format_reset, month_end, utc_day, utc_month
from middleware.rate_limit import shared_pricing, shared_state

NAME = "budget"
log = logging.getLogger("rag_gateway.budget")


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


class BudgetStage:
    name = NAME

    def __init__(
        self,
        settings: BudgetPolicy,
        state: StateBackend,
        pricing: Pricing,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.state = state
        self.pricing = pricing
        self.clock = clock
        self.fail_closed = settings.on_state_error == "fail_closed"

    def checks(self, ctx: RequestContext, admission: Admission) -> list[BudgetCheck]:
        s = self.settings
        prompt = admission.prompt_tokens(ctx)
        most_out = self.pricing.max_output_tokens(ctx.model, ctx.body, s.default_max_output_tokens)
        amount = self.pricing.cost_nanos(ctx.model, prompt, most_out)
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

    async def _admit(self, ctx: RequestContext, admission: Admission) -> Verdict | None:
        checks = self.checks(ctx, admission)
        verdict = await admission.flush(ctx, checks, self.fail_closed)
        if verdict is None or verdict.allowed or not isinstance(verdict.denied, BudgetState):
            return verdict
        target = self.settings.downgrade_to
        if self.settings.on_exceed == "downgrade" and target and target != ctx.model:
            original = ctx.model
            ctx.model = target
            ctx.body = {**ctx.body, "model": target}
            ctx.response_headers["x-gateway-downgraded-from"] = original
            ctx.decide(
                NAME, "downgrade", from_model=original, to_model=target,
                budget=verdict.denied.check.key, spent_nanos=verdict.denied.spent_nanos,
            )  # fmt: skip
            log.info("request %s: %s downgraded to %s (budget)", ctx.request_id, original, target)
            verdict = await admission.flush(ctx, self.checks(ctx, admission), self.fail_closed)
            if verdict is None or verdict.allowed or not isinstance(verdict.denied, BudgetState):
                return verdict
        denied = verdict.denied
        ctx.decide(
            NAME, "reject", budget=denied.check.key, limit_nanos=denied.check.limit_nanos,
            spent_nanos=denied.spent_nanos, requested_nanos=denied.check.amount_nanos,
        )  # fmt: skip
        raise insufficient_quota(denied, self.clock())

    def _alerts(self, ctx: RequestContext, verdict: Verdict) -> None:
        for state in verdict.budgets:
            if state.alert:
                check = state.check
                log.warning(
                    "budget alert: tenant %r, %s %s budget: spend $%s has crossed %.0f%% of $%s",
                    ctx.tenant, check.scope, check.period, format_usd(state.spent_nanos),
                    (self.settings.soft_alert_ratio or 0) * 100, format_usd(check.limit_nanos),
                )  # fmt: skip
                ctx.decide(NAME, "soft_alert", budget=check.key, spent_nanos=state.spent_nanos)

    async def handle(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        headers = ctx.response_headers
        headers["x-gateway-cost-usd"] = "0"
        headers["x-gateway-cost-basis"] = "actual"
        admission = admission_for(ctx, self.state, self.pricing)
        admission.budget_seen = True
        admission.cost_fn = self.pricing.cost_nanos
        verdict = await self._admit(ctx, admission)
        reserved = 0
        if verdict is not None and verdict.allowed:
            self._alerts(ctx, verdict)
            reserved = max((b.check.amount_nanos for b in verdict.budgets), default=0)
            ctx.decide(NAME, "reserve", model=ctx.model, reserved_nanos=reserved)
        try:
            response = await call_next(ctx)
        except BaseException:
            await admission.finish(ctx, None)
            raise
        response = await admission.track(ctx, response)
        if response.stream is not None and admission.cost_nanos is None:
            headers["x-gateway-cost-usd"] = format_usd(reserved)
            headers["x-gateway-cost-basis"] = "reserved"
        else:
            headers["x-gateway-cost-usd"] = format_usd(admission.cost_nanos or 0)
        return response


def build(policy: Policy, services: Services) -> BudgetStage | None:
    settings: BudgetPolicy | None = getattr(policy, "budget", None)
    if settings is None or not settings.enabled:
        return None
    return BudgetStage(settings, shared_state(services), shared_pricing(services))
