"""The budget stage and pricing: reserve-then-settle, reject and downgrade, cost headers, reports."""

from __future__ import annotations

import asyncio
import logging
import random
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.chain import compose
from gateway.config import GatewayConfig
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.response import GatewayResponse
from gateway.services import Services
from gateway.state import StateBackend, make_state, spend_report
from gateway.state.memory import MemoryState
from gateway.state.settings import BudgetPolicy, RateLimitPolicy
from middleware import budget as budget_module
from middleware import rate_limit as rate_limit_module
from middleware.budget import BudgetStage
from middleware.rate_limit import RateLimitStage
from tests.test_rate_limit import chunks, completion, make_ctx, ok_handler, pricing, stream_handler

IN, OUT = 1.5e-7, 6e-7  # gpt-4o-mini in litellm's bundled price map, USD per token


def nanos_of(prompt: int, completion_tokens: int, inp: float = IN, out: float = OUT) -> int:
    return round((prompt * inp + completion_tokens * out) * 1e9)


def test_prices_from_the_bundled_map_and_overrides() -> None:
    p = pricing()
    price = p.price("gpt-4o-mini")
    assert (price.input_per_token, price.output_per_token) == (IN, OUT)
    assert price.source.startswith("litellm:") and price.max_output_tokens == 16384
    assert p.price("cheap").source == "override" and p.price("cheap").input_per_token == pytest.approx(1e-7)
    assert not p.price("llama").known and p.cost_nanos("llama", 1000, 1000) == 0
    assert p.max_output_tokens("gpt-4o-mini", {"max_tokens": 100}, 4096) == 100
    assert p.max_output_tokens("gpt-4o-mini", {"max_completion_tokens": 10**6, "n": 2}, 4096) == 2 * 16384
    assert p.max_output_tokens("llama", {}, 4096) == 4096


async def test_json_cost_header_and_ledger() -> None:
    state = MemoryState()
    stage = BudgetStage(BudgetPolicy(enabled=True, daily_usd=10), state, pricing())
    ctx = make_ctx()
    await stage.handle(ctx, ok_handler(prompt=20, completion_tokens=5))
    assert ctx.response_headers["x-gateway-cost-usd"] == "0.000006"
    assert ctx.response_headers["x-gateway-cost-basis"] == "actual"
    ledger_key = stage.checks(make_ctx(), SimpleNamespace(prompt_tokens=lambda c: 1))[0].key
    assert await state.ledger(ledger_key) == nanos_of(20, 5)


async def test_reject_says_budget_spend_and_reset() -> None:
    stage = BudgetStage(BudgetPolicy(enabled=True, daily_usd=0.001), MemoryState(), pricing())
    ctx = make_ctx()  # no max_tokens: the worst case is 16,384 output tokens, about $0.0098
    with pytest.raises(GatewayError) as raised:
        await stage.handle(ctx, ok_handler())
    error = raised.value
    assert (error.status, error.type, error.code) == (429, "insufficient_quota", "insufficient_quota")
    assert "daily budget of the tenant: $0.001" in error.message
    assert "Spent (including requests in flight): $0.0" in error.message and "resets in" in error.message
    assert ctx.response_headers["x-gateway-cost-usd"] == "0"
    # A request that caps its output fits.
    await stage.handle(make_ctx(max_tokens=100), ok_handler())


async def test_downgrade_rewrites_the_model() -> None:
    settings = BudgetPolicy(enabled=True, daily_usd=0.001, on_exceed="downgrade", downgrade_to="cheap")
    stage = BudgetStage(settings, MemoryState(), pricing())
    seen: list[RequestContext] = []
    ctx = make_ctx()
    await stage.handle(ctx, ok_handler(seen=seen))
    assert ctx.model == "cheap" and seen[0].body["model"] == "cheap"
    assert ctx.response_headers["x-gateway-downgraded-from"] == "gpt-4o-mini"
    assert any(d.stage == "budget" and d.action == "downgrade" for d in ctx.decisions)
    assert ctx.response_headers["x-gateway-cost-usd"] == "0.000003"  # 20 * 1e-7 + 5 * 2e-7 at the override


async def test_failed_call_releases_the_reservation() -> None:
    state = MemoryState()
    stage = BudgetStage(BudgetPolicy(enabled=True, daily_usd=1), state, pricing())

    async def failing(ctx: RequestContext) -> GatewayResponse:
        raise GatewayError(502, "upstream down")

    with pytest.raises(GatewayError):
        await stage.handle(make_ctx(), failing)
    assert all(v == 0 for v in state._ledgers.values())


async def test_stream_reserves_then_settles_from_the_usage_chunk() -> None:
    state = MemoryState()
    stage = BudgetStage(BudgetPolicy(enabled=True, monthly_usd=1), state, pricing())
    ctx = make_ctx(stream=True, max_tokens=50)
    response = await stage.handle(ctx, stream_handler(prompt=40, completion_tokens=30))
    assert ctx.response_headers["x-gateway-cost-basis"] == "reserved"
    assert float(ctx.response_headers["x-gateway-cost-usd"]) > 0
    got = await chunks(response)
    assert all("usage" not in c for c in got)
    assert list(state._ledgers.values()) == [nanos_of(40, 30)]


async def _concurrent_ledger(state: StateBackend) -> None:
    tenant = "b" + random.randbytes(4).hex()
    settings = BudgetPolicy(enabled=True, daily_usd=1000, per_key_monthly_usd=1000)
    stage = BudgetStage(settings, state, pricing())
    costs: list[int] = []

    async def one(i: int) -> None:
        prompt, out = random.randint(1, 500), random.randint(0, 500)

        async def upstream(ctx: RequestContext) -> GatewayResponse:
            await asyncio.sleep(random.random() / 200)
            return GatewayResponse.of_json(completion(ctx, prompt, out))

        ctx = make_ctx(key_id=f"key{i % 4}", max_tokens=500)
        ctx.policy = ctx.policy.model_copy(update={"tenant": tenant})
        await stage.handle(ctx, upstream)
        costs.append(round(float(ctx.response_headers["x-gateway-cost-usd"]) * 1e9))
        assert costs[-1] == nanos_of(prompt, out)

    await asyncio.gather(*(one(i) for i in range(1000)))
    probe = make_ctx()
    probe.policy = probe.policy.model_copy(update={"tenant": tenant})
    day_key = stage.checks(probe, SimpleNamespace(prompt_tokens=lambda c: 1))[0].key
    assert await state.ledger(day_key) == sum(costs)
    report = await spend_report(state, tenant, days=1)
    assert report["requests"] == 1000 and round(report["cost_usd"] * 1e9) == sum(costs)
    assert round(sum(report["days"][0]["keys"].values()) * 1e9) == sum(costs)


async def test_1000_concurrent_requests_memory() -> None:
    await _concurrent_ledger(MemoryState())


async def test_1000_concurrent_requests_redis() -> None:
    state = make_state("redis://127.0.0.1:6379/15")
    if not await state.ping():
        pytest.skip("no Redis on 127.0.0.1:6379")
    try:
        await _concurrent_ledger(state)
    finally:
        await state.close()


class CountingState:
    """Wraps a backend and counts its calls: the two stages must share one admit and one settle."""

    def __init__(self, inner: StateBackend) -> None:
        self.inner = inner
        self.calls: list[str] = []

    async def admit(self, rates: list, budgets: list) -> Any:
        self.calls.append(f"admit:{len(rates)}r{len(budgets)}b")
        return await self.inner.admit(rates, budgets)

    async def settle(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append("settle")
        await self.inner.settle(*args, **kwargs)


async def test_rate_limit_and_budget_share_one_state_call() -> None:
    state: Any = CountingState(MemoryState())
    rate = RateLimitStage(
        RateLimitPolicy(enabled=True, rpm=10, tpm=10_000),
        state,
        pricing(),
        defer_to_budget=True,
    )
    budget = BudgetStage(BudgetPolicy(enabled=True, daily_usd=1, per_key_daily_usd=1), state, pricing())
    ctx = make_ctx(max_tokens=10)
    await compose([rate, budget], ok_handler())(ctx)
    assert state.calls == ["admit:2r2b", "settle"]
    assert ctx.response_headers["x-ratelimit-remaining-requests"] == "9"
    assert ctx.response_headers["x-gateway-cost-usd"] == "0.000006"
    # The other order still enforces both (two calls, as the budget could not carry the rate checks).
    state.calls.clear()
    ctx = make_ctx(max_tokens=10)
    await compose(
        [budget, RateLimitStage(RateLimitPolicy(enabled=True, rpm=10), state, pricing())], ok_handler()
    )(ctx)
    assert state.calls == ["admit:0r2b", "admit:1r0b", "settle", "settle"]


async def test_soft_alert_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    stage = BudgetStage(
        BudgetPolicy(enabled=True, daily_usd=0.0001, soft_alert_ratio=0.5), MemoryState(), pricing()
    )
    with caplog.at_level(logging.WARNING, logger="rag_gateway.budget"):
        for _ in range(10):
            try:
                await stage.handle(make_ctx(max_tokens=5), ok_handler(prompt=20, completion_tokens=5))
            except GatewayError:
                pass
    assert sum("budget alert" in r.message for r in caplog.records) == 1


def test_build_reads_the_policy_and_shares_state_and_pricing() -> None:
    services = Services(config=GatewayConfig(), router=None, clients={})
    services.extras["pricing"] = pricing()
    off = SimpleNamespace(tenant="t", rate_limit=RateLimitPolicy(), budget=BudgetPolicy())
    assert rate_limit_module.build(off, services) is None
    assert budget_module.build(off, services) is None
    on = SimpleNamespace(
        tenant="t",
        rate_limit=RateLimitPolicy(enabled=True, rpm=1),
        budget=BudgetPolicy(enabled=True, daily_usd=1),
    )
    rate = rate_limit_module.build(on, services)
    budget = budget_module.build(on, services)
    assert rate is not None and budget is not None and rate.defer_to_budget
    assert rate.state is budget.state is services.extras["state"]
    assert isinstance(rate.state, MemoryState)


def test_settings_validate() -> None:
    with pytest.raises(ValueError, match="downgrade_to"):
        BudgetPolicy(enabled=True, on_exceed="downgrade")
    with pytest.raises(ValueError):
        RateLimitPolicy(rpm=0)
    with pytest.raises(ValueError):
        BudgetPolicy(surprise=1)  # type: ignore[call-arg]
