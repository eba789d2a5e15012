"""rate_limit: requests and tokens per minute, per tenant, per key and per model.

Limits hold over any sliding minute (see gateway.state.base). Tokens are counted before the call
(the prompt, with the model's tokenizer) and corrected after it with the real usage, completion
included. Every response carries OpenAI's x-ratelimit-* headers for the tightest limit of each
kind; over a limit the answer is OpenAI's 429 (type "requests" or "tokens", code
"rate_limit_exceeded") with Retry-After. When a budget stage follows, its single state call
carries these checks too.
"""

from __future__ import annotations

import math
from typing import Any

from gateway.chain import Handler
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.policy import Policy
from gateway.pricing import Pricing
from gateway.response import GatewayResponse
from gateway.services import Services
from gateway.state.admission import Admission, admission_for
from gateway.state.base import RateCheck, RateKind, RateState, StateBackend, Verdict
from gateway.state.settings import RateLimitPolicy

NAME = "rate_limit"
WINDOW_S = 60.0


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


def tightest(states: list[RateState], kind: str) -> RateState | None:
    """The limit a client should watch: least remaining, then the longest reset."""
    of_kind = [s for s in states if s.check.kind == kind]
    if not of_kind:
        return None
    return min(of_kind, key=lambda s: (s.remaining, -s.reset_s))


def rate_limited(ctx: RequestContext, state: RateState) -> GatewayError:
    check = state.check
    kind = check.kind
    unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
    wait = format_duration(state.retry_after_s)
    if check.cost > check.limit:
        message = (
            f"Request too large for {ctx.model} for {check.scope} on {unit}: Limit {check.limit}, "
            f"Requested {check.cost}. The input or output tokens must be reduced in order to run "
            "successfully."
        )
    else:
        message = (
            f"Rate limit reached for {ctx.model} for {check.scope} on {unit}: Limit {check.limit}, "
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


class RateLimitStage:
    name = NAME

    def __init__(
        self, settings: RateLimitPolicy, state: StateBackend, pricing: Pricing, defer_to_budget: bool = False
    ) -> None:
        self.settings = settings
        self.state = state
        self.pricing = pricing
        self.defer_to_budget = defer_to_budget
        self.fail_closed = settings.on_state_error == "fail_closed"

    def checks(self, ctx: RequestContext, admission: Admission) -> list[RateCheck]:
        s = self.settings
        tenant = "{" + ctx.tenant + "}"  # a hash tag: all of a tenant's keys on one cluster slot
        tokens = admission.prompt_tokens(ctx) if s.limits_tokens() else 0
        per_model = s.per_model.get(ctx.model)
        wanted: list[tuple[int | None, RateKind, str, str]] = [
            (s.rpm, "requests", f"{tenant}:rl:rpm", "the tenant"),
            (s.tpm, "tokens", f"{tenant}:rl:tpm", "the tenant"),
            (s.per_key_rpm, "requests", f"{tenant}:rl:k:{ctx.key_id}:rpm", f"key {ctx.key_id}"),
            (s.per_key_tpm, "tokens", f"{tenant}:rl:k:{ctx.key_id}:tpm", f"key {ctx.key_id}"),
        ]
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

    def on_verdict(self, ctx: RequestContext, verdict: Verdict, enforce: bool) -> None:
        headers = ctx.response_headers
        for kind in ("requests", "tokens"):
            state = tightest(verdict.rates, kind)
            if state is not None:
                headers[f"x-ratelimit-limit-{kind}"] = str(state.check.limit)
                headers[f"x-ratelimit-remaining-{kind}"] = str(state.remaining)
                headers[f"x-ratelimit-reset-{kind}"] = format_duration(state.reset_s)
        denied = verdict.denied
        if isinstance(denied, RateState):
            ctx.decide(
                NAME, "reject", kind=denied.check.kind, scope=denied.check.scope, limit=denied.check.limit,
                used=denied.used, requested=denied.check.cost, retry_after_s=round(denied.retry_after_s, 3),
            )  # fmt: skip
            if enforce:
                raise rate_limited(ctx, denied)
        elif verdict.allowed:
            detail: dict[str, Any] = {s.check.key.partition(":rl:")[2]: s.remaining for s in verdict.rates}
            ctx.decide(NAME, "allow", remaining=detail)

    async def handle(self, ctx: RequestContext, call_next: Handler) -> GatewayResponse:
        admission = admission_for(ctx, self.state, self.pricing)
        admission.rate = self
        # A budget stage after this one runs both sets of checks in one state call; one that
        # already ran (placed before this stage) could not include them, so check here.
        if not self.defer_to_budget or admission.budget_seen:
            await admission.flush(ctx)
        try:
            response = await call_next(ctx)
        except BaseException:
            await admission.finish(ctx, None)
            raise
        if not admission.rate_done:
            # Something between here and the budget stage answered (a cache hit): still count it.
            await admission.flush(ctx, enforce=False)
        return await admission.track(ctx, response)


def shared_state(services: Services) -> StateBackend:
    """The configured state backend; the embedded one when none was configured."""
    state = getattr(services, "state", None) or services.extras.get("state")
    if state is None:
        from gateway.state import make_state

        state = services.extras.setdefault("state", make_state(services.config.state))
    return state


def shared_pricing(services: Services) -> Pricing:
    """One Pricing (price lookups and tokenizers cached) for both stages of every tenant."""
    pricing = services.extras.get("pricing")
    if pricing is None:
        overrides = getattr(services.config, "pricing", None) or {}
        pricing = services.extras.setdefault("pricing", Pricing(services.config, overrides))
        # Load each chat model's tokenizer now (o200k takes ~0.6 s), not on a client's request.
        for model in services.config.models:
            if model.mode == "chat":
                pricing.count_text(model.name, "warm up")
    return pricing


def build(policy: Policy, services: Services) -> RateLimitStage | None:
    settings: RateLimitPolicy | None = getattr(policy, "rate_limit", None)
    if settings is None or not settings.enabled:
        return None
    budget = getattr(policy, "budget", None)
    defer = bool(budget is not None and budget.enabled)
    return RateLimitStage(settings, shared_state(services), shared_pricing(services), defer_to_budget=defer)
