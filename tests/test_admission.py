"""The admission stage: rate limits, budgets and cost accounting, one admit and one settle per request."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.chain import Handler
from gateway.config import DeploymentConfig, GatewayConfig, ModelConfig
from gateway.context import RequestContext, SideCall
from gateway.errors import GatewayError
from gateway.policy import Policy
from gateway.pricing import PriceOverride, Pricing
from gateway.protocols import chat
from gateway.protocols.model import Choice, Completion, Usage
from gateway.protocols.sse import DONE_EVENT, encode_event, event_data, iter_events
from gateway.response import GatewayResponse
from gateway.state import StateBackend, make_state, spend_report
from gateway.state.journal import SettleJournal
from gateway.state.leases import LeaseKeeper
from gateway.state.memory import MemoryState
from gateway.state.settings import BudgetPolicy, ModelRateLimit, RateLimitPolicy
from middleware.admission import AdmissionStage, SideModel, format_duration

IN, OUT = 1.5e-7, 6e-7  # gpt-4o-mini in litellm's bundled price map, USD per token


def nanos_of(prompt: int, completion_tokens: int, inp: float = IN, out: float = OUT) -> int:
    return round((prompt * inp + completion_tokens * out) * 1e9)


@functools.cache
def pricing() -> Pricing:
    config = GatewayConfig(
        models=[
            ModelConfig(
                name="gpt-4o-mini", deployments=[DeploymentConfig(provider="openai", model="gpt-4o-mini")]
            ),
            ModelConfig(name="cheap", deployments=[DeploymentConfig(provider="openai", model="gpt-4o-mini")]),
            ModelConfig(
                name="llama",
                deployments=[
                    DeploymentConfig(
                        provider="vllm", model="meta-llama/Llama-3.1-8B-Instruct", api_base="http://x"
                    )
                ],
            ),
            ModelConfig(name="local-extractive", deployments=[DeploymentConfig(provider="local", model="x")]),
        ]
    )
    return Pricing(config, {"cheap": PriceOverride(input_per_1k=0.0001, output_per_1k=0.0002)})


def stage(
    rate: RateLimitPolicy | None = None,
    budget: BudgetPolicy | None = None,
    state: StateBackend | None = None,
    journal_dir: Path | None = None,
) -> AdmissionStage:
    state = state or MemoryState()
    # The journal creates its directory only when a settle fails: tests that make one fail pass theirs.
    journal = SettleJournal(state, journal_dir or Path(tempfile.gettempdir()) / "rag-gateway-test-journal")
    return AdmissionStage(
        rate or RateLimitPolicy(), budget or BudgetPolicy(), state, pricing(), LeaseKeeper(state, 30), journal
    )


def make_ctx(
    model: str = "gpt-4o-mini", stream: bool = False, key_id: str = "k1", tenant: str = "t", **body: Any
) -> RequestContext:
    request = {"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    request.update(body, stream=stream)
    return RequestContext.internal(Policy(tenant=tenant), request, "r", key_id)


def completion_body(model: str, prompt: int, completion_tokens: int) -> bytes:
    return orjson.dumps(
        {
            "id": "c",
            "object": "chat.completion",
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt + completion_tokens,
            },
        }
    )


def answered(ctx: RequestContext) -> None:
    """What the router records when a deployment answered."""
    ctx.served_model = ctx.model


def ok_handler(
    prompt: int = 20, completion_tokens: int = 5, seen: list[RequestContext] | None = None
) -> Handler:
    async def handler(ctx: RequestContext) -> GatewayResponse:
        if seen is not None:
            seen.append(ctx)
        answered(ctx)
        return GatewayResponse(raw=completion_body(ctx.model, prompt, completion_tokens))

    return handler


def stream_handler(prompt: int = 20, completion_tokens: int = 5, send_usage: bool = True) -> Handler:
    """A chat upstream that streams (with include_usage on, as the gateway always asks)."""

    async def handler(ctx: RequestContext) -> GatewayResponse:
        answered(ctx)

        async def events() -> AsyncIterator[bytes]:
            base = {"id": "c", "object": "chat.completion.chunk", "model": ctx.model}
            for word in ["The ", "capital ", "is ", "Paris."]:
                chunk = {**base, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
                if send_usage:
                    chunk["usage"] = None  # what OpenAI does once include_usage is on
                yield encode_event(chunk)
            if send_usage:
                usage = {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt + completion_tokens,
                }
                yield encode_event({**base, "choices": [], "usage": usage})
            yield DONE_EVENT

        return GatewayResponse(stream=events())

    return handler


async def chunks(response: GatewayResponse) -> list[dict[str, Any]]:
    assert response.stream is not None
    out = []
    async for event in iter_events(response.stream):
        payload = event_data(event)
        if payload and payload != b"[DONE]":
            out.append(orjson.loads(payload))
    return out


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.12, "120ms"), (0.0004, "1ms"), (1, "1s"), (1.5, "1.5s"), (59.874, "59.874s"), (360, "6m0s"),
     (3723, "1h2m3s"), (0, "0s")],
)  # fmt: skip
def test_reset_format_is_openai_like(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# -- rate limits ----------------------------------------------------------------------------------


async def test_headers_and_429_over_rpm() -> None:
    admission = stage(RateLimitPolicy(enabled=True, rpm=2, tpm=10_000))
    ctx = make_ctx()
    await admission.handle(ctx, ok_handler())
    h = ctx.response_headers
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("2", "1")
    assert h["x-ratelimit-reset-requests"] == "1m0s"
    assert h["x-ratelimit-limit-tokens"] == "10000"
    assert 9_950 < int(h["x-ratelimit-remaining-tokens"]) < 10_000
    await admission.handle(make_ctx(), ok_handler())
    ctx = make_ctx()
    with pytest.raises(GatewayError) as raised:
        await admission.handle(ctx, ok_handler())
    error = raised.value
    assert error.status == 429 and error.type == "requests" and error.code == "rate_limit_exceeded"
    assert "Limit 2, Used 2, Requested 1" in error.message
    assert 58 <= int(error.headers["retry-after"]) <= 60 and int(error.headers["retry-after-ms"]) > 58_000
    assert ctx.response_headers["x-ratelimit-remaining-requests"] == "0"
    assert ctx.decisions[-1].action == "reject"


async def test_tokens_are_counted_before_and_reconciled_after() -> None:
    admission = stage(RateLimitPolicy(enabled=True, tpm=1000))
    ctx = make_ctx()
    prompt = pricing().count_prompt("gpt-4o-mini", ctx.request.body)
    assert 8 <= prompt <= 20
    await admission.handle(ctx, ok_handler(prompt=300, completion_tokens=690))
    assert ctx.response_headers["x-ratelimit-remaining-tokens"] == str(1000 - prompt)
    ctx = make_ctx()
    with pytest.raises(GatewayError) as raised:  # 990 real tokens + this prompt > 1000
        await admission.handle(ctx, ok_handler())
    assert raised.value.type == "tokens"
    assert f"Used 990, Requested {prompt}" in raised.value.message


async def test_per_key_and_per_model_limits() -> None:
    admission = stage(
        RateLimitPolicy(enabled=True, per_key_rpm=1, per_model={"cheap": ModelRateLimit(rpm=5)})
    )
    await admission.handle(make_ctx(key_id="a"), ok_handler())
    await admission.handle(make_ctx(key_id="b"), ok_handler())  # another key has its own minute
    with pytest.raises(GatewayError, match="for key a on requests"):
        await admission.handle(make_ctx(key_id="a"), ok_handler())
    ctx = make_ctx(model="cheap", key_id="c")
    await admission.handle(ctx, ok_handler())
    # The key has 0 left, the model 4: the headers show the tighter one.
    assert ctx.response_headers["x-ratelimit-remaining-requests"] == "0"
    assert ctx.response_headers["x-ratelimit-limit-requests"] == "1"


def test_a_chat_upstream_is_always_asked_for_stream_usage() -> None:
    request = make_ctx(stream=True).request
    assert chat.upstream_body(request, "up-model")["stream_options"] == {"include_usage": True}
    assert chat.upstream_body(make_ctx().request, "up-model").get("stream_options") is None


async def test_stream_usage_is_read_stripped_and_reconciled() -> None:
    state = MemoryState()
    admission = stage(RateLimitPolicy(enabled=True, tpm=1000), state=state)
    ctx = make_ctx(stream=True)
    response = await admission.handle(ctx, stream_handler(prompt=100, completion_tokens=400))
    assert response.is_raw  # relayed as bytes: the tap reads usage without decoding every chunk
    got = await chunks(response)
    assert all(c.get("usage") is None for c in got) and all(c["choices"] for c in got)
    assert "".join(c["choices"][0]["delta"]["content"] for c in got) == "The capital is Paris."
    assert ctx.usage is not None and (ctx.usage.input_tokens, ctx.usage.output_tokens) == (100, 400)
    # 500 tokens are now in the minute: a 500-token limit admits nothing more.
    with pytest.raises(GatewayError):
        await stage(RateLimitPolicy(enabled=True, tpm=500), state=state).handle(make_ctx(), ok_handler())


async def test_stream_keeps_usage_the_client_asked_for() -> None:
    ctx = make_ctx(stream=True, stream_options={"include_usage": True})
    got = await chunks(await stage(RateLimitPolicy(enabled=True, tpm=1000)).handle(ctx, stream_handler()))
    assert got[-1]["usage"]["completion_tokens"] == 5


async def test_stream_without_usage_counts_the_streamed_text() -> None:
    ctx = make_ctx(stream=True)
    await chunks(
        await stage(RateLimitPolicy(enabled=True, tpm=1000)).handle(ctx, stream_handler(send_usage=False))
    )
    settled = next(d for d in ctx.decisions if d.action == "settled")
    assert settled.detail is not None and settled.detail["completion_tokens"] == 5  # "The capital is Paris."


async def test_an_answer_from_a_stage_counts_as_a_request_and_costs_nothing() -> None:
    admission = stage(RateLimitPolicy(enabled=True, rpm=3), BudgetPolicy(enabled=True, daily_usd=1))

    async def cache_hit(ctx: RequestContext) -> GatewayResponse:
        return GatewayResponse.answer(
            Completion("c", ctx.model, 0, [Choice(0, "Paris.", finish_reason="stop")]), False
        )

    ctx = make_ctx(max_tokens=10)
    await admission.handle(ctx, cache_hit)
    assert ctx.response_headers["x-ratelimit-remaining-requests"] == "2"
    assert ctx.response_headers["x-gateway-cost-usd"] == "0" and ctx.cost_nanos is None
    assert all(v == 0 for v in admission.state._ledgers.values())  # type: ignore[attr-defined]


def test_token_counting_never_touches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Llama would load its tokenizer from the hub and image parts could be fetched: neither may happen."""
    attempts: list[Any] = []
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if not (isinstance(address, tuple) and str(address[0]).startswith(("127.", "::1", "localhost"))):
            attempts.append(address)
            raise OSError("network disabled in this test")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: attempts.append(a) or [])
    p = pricing()
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}]}
    started = time.perf_counter()
    for model in ["llama", "gpt-4o-mini", "claude-3-5-haiku-latest", "unknown-model", "llama-3-70b"]:
        assert p.count_prompt(model, body) > 5
        assert p.count_text(model, "Paris is the capital of France.") > 3
    assert time.perf_counter() - started < 5
    assert attempts == []


def test_pricing_and_counting_never_import_litellm() -> None:
    """litellm costs seconds and ~250 MB to import: prices and tokenizers are read as data instead."""
    code = (
        "import sys, os\n"
        "from gateway.pricing import Pricing\n"
        "p = Pricing()\n"
        "assert p.price('gpt-4o-mini').input_per_token == 1.5e-07\n"
        "assert p.count_text('gpt-4o', 'Paris is the capital of France.') == 7\n"
        "assert p.count_text('claude-3-5-haiku-latest', 'Paris is the capital of France.') > 3\n"
        "assert 'litellm' in os.environ['TIKTOKEN_CACHE_DIR']\n"
        "assert 'litellm' not in sys.modules, 'litellm was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# -- prices and budgets ---------------------------------------------------------------------------


def test_prices_from_the_bundled_map_and_overrides() -> None:
    p = pricing()
    price = p.price("gpt-4o-mini")
    assert (price.input_per_token, price.output_per_token) == (IN, OUT)
    assert price.source.startswith("map:") and price.max_output_tokens == 16384
    assert p.price("cheap").source == "override" and p.price("cheap").input_per_token == pytest.approx(1e-7)
    assert not p.price("llama").known and p.cost_nanos("llama", 1000, 1000) == 0
    assert p.price("local-extractive").known and p.cost_nanos("local-extractive", 1000, 1000) == 0
    assert p.max_output_tokens("gpt-4o-mini", make_ctx(max_tokens=100).request, 4096) == 100
    capped = make_ctx(max_completion_tokens=10**6, n=2).request
    assert p.max_output_tokens("gpt-4o-mini", capped, 4096) == 2 * 16384
    assert p.max_output_tokens("llama", make_ctx().request, 4096) == 4096


async def test_every_answer_is_priced_and_booked_without_a_budget() -> None:
    state = MemoryState()
    admission = stage(state=state)
    ctx = make_ctx(tenant="acct")
    await admission.handle(ctx, ok_handler(prompt=20, completion_tokens=5))
    assert ctx.response_headers["x-gateway-cost-usd"] == "0.000006"
    assert ctx.cost_nanos == nanos_of(20, 5)
    report = await spend_report(state, "acct", days=1)
    assert report["requests"] == 1 and report["models"]["gpt-4o-mini"]["cost_usd"] == nanos_of(20, 5) / 1e9


async def test_a_model_without_a_price_is_counted_not_priced(caplog: pytest.LogCaptureFixture) -> None:
    ctx = make_ctx(model="llama")
    await stage().handle(ctx, ok_handler())
    assert "x-gateway-cost-usd" not in ctx.response_headers and ctx.cost_nanos is None
    assert ctx.usage is not None and ctx.usage.total_tokens == 25
    assert any(d.action == "unpriced" for d in ctx.decisions)


async def test_json_cost_header_and_ledger() -> None:
    state = MemoryState()
    admission = stage(budget=BudgetPolicy(enabled=True, daily_usd=10), state=state)
    ctx = make_ctx()
    await admission.handle(ctx, ok_handler(prompt=20, completion_tokens=5))
    assert ctx.response_headers["x-gateway-cost-usd"] == "0.000006"
    assert ctx.response_headers["x-gateway-cost-basis"] == "actual"
    ledger_key = admission.budget_checks(make_ctx(), admission_probe())[0].key
    assert await state.ledger(ledger_key) == nanos_of(20, 5)


def admission_probe() -> Any:
    from middleware.admission import Admitted

    probe = Admitted()
    probe.prompt_tokens["gpt-4o-mini"] = 1
    return probe


async def test_reject_says_budget_spend_and_reset() -> None:
    admission = stage(budget=BudgetPolicy(enabled=True, daily_usd=0.001))
    ctx = make_ctx()  # no max_tokens: the worst case is 16,384 output tokens, about $0.0098
    with pytest.raises(GatewayError) as raised:
        await admission.handle(ctx, ok_handler())
    error = raised.value
    assert (error.status, error.type, error.code) == (429, "insufficient_quota", "insufficient_quota")
    assert "daily budget of the tenant: $0.001" in error.message
    assert "Spent (including requests in flight): $0;" in error.message and "resets in" in error.message
    # A request that caps its output fits.
    await admission.handle(make_ctx(max_tokens=100), ok_handler())


async def test_downgrade_rewrites_the_model() -> None:
    admission = stage(
        budget=BudgetPolicy(enabled=True, daily_usd=0.001, on_exceed="downgrade", downgrade_to="cheap")
    )
    seen: list[RequestContext] = []
    ctx = make_ctx()
    await admission.handle(ctx, ok_handler(seen=seen))
    assert ctx.model == "cheap" and seen[0].request.body["model"] == "cheap"
    assert ctx.response_headers["x-gateway-downgraded-from"] == "gpt-4o-mini"
    assert any(d.stage == "admission" and d.action == "downgrade" for d in ctx.decisions)
    assert ctx.response_headers["x-gateway-cost-usd"] == "0.000003"  # 20 * 1e-7 + 5 * 2e-7 at the override


async def test_failed_call_releases_the_reservation() -> None:
    state = MemoryState()
    admission = stage(budget=BudgetPolicy(enabled=True, daily_usd=1), state=state)

    async def failing(ctx: RequestContext) -> GatewayResponse:
        raise GatewayError(502, "upstream down")

    with pytest.raises(GatewayError):
        await admission.handle(make_ctx(), failing)
    assert all(v == 0 for v in state._ledgers.values())


async def test_stream_reserves_then_settles_from_the_usage_chunk() -> None:
    state = MemoryState()
    admission = stage(budget=BudgetPolicy(enabled=True, monthly_usd=1), state=state)
    ctx = make_ctx(stream=True, max_tokens=50)
    response = await admission.handle(ctx, stream_handler(prompt=40, completion_tokens=30))
    assert ctx.response_headers["x-gateway-cost-basis"] == "estimate"
    assert float(ctx.response_headers["x-gateway-cost-usd"]) > 0
    got = await chunks(response)
    assert all(c.get("usage") is None for c in got)
    assert list(state._ledgers.values()) == [nanos_of(40, 30)]


async def _concurrent_ledger(state: StateBackend) -> None:
    tenant = "b" + random.randbytes(4).hex()
    admission = stage(
        budget=BudgetPolicy(enabled=True, daily_usd=1000, per_key_monthly_usd=1000), state=state
    )
    costs: list[int] = []

    async def one(i: int) -> None:
        prompt, out = random.randint(1, 500), random.randint(0, 500)

        async def upstream(ctx: RequestContext) -> GatewayResponse:
            await asyncio.sleep(random.random() / 200)
            answered(ctx)
            return GatewayResponse(raw=completion_body(ctx.model, prompt, out))

        ctx = make_ctx(key_id=f"key{i % 4}", max_tokens=500, tenant=tenant)
        await admission.handle(ctx, upstream)
        costs.append(round(float(ctx.response_headers["x-gateway-cost-usd"]) * 1e9))
        assert costs[-1] == nanos_of(prompt, out)

    await asyncio.gather(*(one(i) for i in range(1000)))
    day_key = admission.budget_checks(make_ctx(tenant=tenant), admission_probe())[0].key
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
    """Wraps a backend and counts its calls: one admit and one settle per request."""

    def __init__(self, inner: StateBackend) -> None:
        self.inner = inner
        self.batches_reports = inner.batches_reports
        self.calls: list[str] = []

    async def admit(self, rates: list, budgets: list) -> Any:
        self.calls.append(f"admit:{len(rates)}r{len(budgets)}b")
        return await self.inner.admit(rates, budgets)

    async def settle(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append("settle")
        await self.inner.settle(*args, **kwargs)


async def test_limits_and_budgets_are_one_admit_and_one_settle() -> None:
    state: Any = CountingState(MemoryState())
    admission = stage(
        RateLimitPolicy(enabled=True, rpm=10, tpm=10_000),
        BudgetPolicy(enabled=True, daily_usd=1, per_key_daily_usd=1),
        state,
    )
    ctx = make_ctx(max_tokens=10)
    await admission.handle(ctx, ok_handler())
    assert state.calls == ["admit:2r2b", "settle"]
    assert ctx.response_headers["x-ratelimit-remaining-requests"] == "9"
    assert ctx.response_headers["x-gateway-cost-usd"] == "0.000006"


async def test_soft_alert_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    admission = stage(budget=BudgetPolicy(enabled=True, daily_usd=0.0001, soft_alert_ratio=0.5))
    with caplog.at_level(logging.WARNING, logger="rag_gateway.admission"):
        for _ in range(10):
            try:
                await admission.handle(make_ctx(max_tokens=5), ok_handler(prompt=20, completion_tokens=5))
            except GatewayError:
                pass
    assert sum("budget alert" in r.message for r in caplog.records) == 1


def test_settings_validate() -> None:
    with pytest.raises(ValueError, match="downgrade_to"):
        BudgetPolicy(enabled=True, on_exceed="downgrade")
    with pytest.raises(ValueError):
        RateLimitPolicy(rpm=0)
    with pytest.raises(ValueError):
        BudgetPolicy(surprise=1)  # type: ignore[call-arg]


async def test_calls_made_on_the_tenants_behalf_are_reserved_and_booked() -> None:
    """A reranker's worst case is reserved with the request, and what it used is booked with it."""
    budget = BudgetPolicy(enabled=True, daily_usd=1)
    plain = stage(budget=budget)
    reranked = AdmissionStage(
        RateLimitPolicy(), budget, MemoryState(), pricing(), LeaseKeeper(MemoryState(), 30), plain.journal,
        (SideModel("cheap", 12_000, 200),),
    )  # fmt: skip
    ctx_plain, ctx_side = make_ctx(max_tokens=10), make_ctx(max_tokens=10)
    await plain.handle(ctx_plain, ok_handler())

    async def answer_after_a_rerank(ctx: RequestContext) -> GatewayResponse:
        ctx.side_calls.append(SideCall("cheap", Usage(3000, 20)))
        return await ok_handler()(ctx)

    await reranked.handle(ctx_side, answer_after_a_rerank)
    reserved = [
        d.detail["reserved_nanos"]
        for ctx in (ctx_plain, ctx_side)
        for d in ctx.decisions
        if d.action == "allow"
    ]
    prompt = pricing().count_prompt("gpt-4o-mini", ctx_side.request.body)
    assert reserved[1] - reserved[0] == round((prompt + 12_000) * 1e-7 * 1e9 + 200 * 2e-7 * 1e9)
    assert ctx_side.cost_nanos - ctx_plain.cost_nanos == round(3000 * 1e-7 * 1e9 + 20 * 2e-7 * 1e9)


def test_period_ends_are_the_next_utc_midnight_and_first_of_month() -> None:
    import random
    from datetime import UTC, datetime, timedelta

    from gateway.state.spend import day_end, month_end

    rng = random.Random(4)
    for ts in [0.0, 951_868_799.9, 1_798_761_599.5, 1_798_761_600.0] + [
        rng.uniform(0, 4e9) for _ in range(500)
    ]:
        moment = datetime.fromtimestamp(ts, UTC)
        tomorrow = moment.date() + timedelta(days=1)
        assert day_end(ts) == datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=UTC).timestamp()
        year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
        assert month_end(ts) == datetime(year, month, 1, tzinfo=UTC).timestamp()
