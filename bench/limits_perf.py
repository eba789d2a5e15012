"""What the rate-limit and budget stages add to a request, per state backend.

Runs the two stages in front of an upstream that answers at once (JSON with usage), and the bare
upstream alone, on one event loop; the difference per request is what the checks cost: prompt
token counting, the admit round trip, usage parsing, cost and the settle round trip.

    LITELLM_LOCAL_MODEL_COST_MAP=True python bench/limits_perf.py [--state redis://127.0.0.1:6379/14]
        [--requests 3000] [--concurrency 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
from gateway.chain import compose
from gateway.config import DeploymentConfig, GatewayConfig, ModelConfig
from gateway.context import RequestContext
from gateway.policy import Policy
from gateway.pricing import Pricing
from gateway.response import GatewayResponse
from gateway.state import make_state
from gateway.state.journal import SettleJournal
from gateway.state.leases import LeaseKeeper
from gateway.state.settings import BudgetPolicy, RateLimitPolicy
from middleware.admission import AdmissionStage

PROMPT = (
    "You are a support assistant for an industrial pump manufacturer. Answer from the manual only.",
    "How often should the seals of the P-200 be replaced when it runs continuously at 60 degrees?",
)


def make_ctx(tenant: str) -> RequestContext:
    body = {
        "model": "gpt-4o-mini",
        "max_tokens": 256,
        "messages": [{"role": "system", "content": PROMPT[0]}, {"role": "user", "content": PROMPT[1]}],
    }
    return RequestContext.internal(Policy(tenant=tenant), body, uuid.uuid4().hex, "benchkey0001")


async def upstream(ctx: RequestContext) -> GatewayResponse:
    ctx.served_model = ctx.model  # as the router records an answer
    return GatewayResponse(
        raw=b'{"id":"c","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"Every 4,000 hours."},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":52,"completion_tokens":8,"total_tokens":60}}'
    )


async def cpu_ms_per_request(handler, tenant: str, n: int) -> float:  # type: ignore[no-untyped-def]
    """Process CPU (this loop, and redis-py's parsing) per request, one at a time."""
    started = time.process_time()
    await timed(handler, tenant, n, 1)
    return (time.process_time() - started) * 1000 / n


async def timed(handler, tenant: str, n: int, concurrency: int) -> list[float]:  # type: ignore[no-untyped-def]
    samples: list[float] = []
    queue = iter(range(n))

    async def worker() -> None:
        for _ in queue:
            ctx = make_ctx(tenant)
            started = time.perf_counter()
            await handler(ctx)
            samples.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


def summary(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"p50 {q[49]:.3f} ms  p90 {q[89]:.3f} ms  p99 {q[98]:.3f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()

    deployment = DeploymentConfig(provider="openai", model="gpt-4o-mini")
    config = GatewayConfig(models=[ModelConfig(name="gpt-4o-mini", deployments=[deployment])])
    pricing = Pricing(config)
    pricing.warm()  # load the tokenizer before timing
    state = make_state(args.state)
    tenant = "bench" + uuid.uuid4().hex[:8]
    limits = RateLimitPolicy(enabled=True, rpm=10**9, tpm=10**12, per_key_rpm=10**9, per_key_tpm=10**12)
    budget = BudgetPolicy(enabled=True, daily_usd=10**6, monthly_usd=10**6, per_key_daily_usd=10**6)
    journal = SettleJournal(state, Path(tempfile.mkdtemp(prefix="rg-bench-journal-")))
    leases = LeaseKeeper(state, 30)
    stage = AdmissionStage(limits, budget, state, pricing, leases, journal)
    chain = compose([stage], upstream)
    # Accounting alone (a tenant with no limits and no budget): priced and booked, one settle.
    accounting = compose(
        [AdmissionStage(RateLimitPolicy(), BudgetPolicy(), state, pricing, leases, journal)], upstream
    )
    for handler in (chain, accounting, upstream):  # warm-up: connections, script load, caches
        await timed(handler, tenant, 200, args.concurrency)
    bare = await timed(upstream, tenant, args.requests, args.concurrency)
    staged = await timed(chain, tenant, args.requests, args.concurrency)
    booked = await timed(accounting, tenant, args.requests, args.concurrency)
    print(f"state {state.name} ({args.state}), {args.requests} requests, concurrency {args.concurrency}")
    print(f"  bare upstream          {summary(bare)}")
    print(f"  rate limit + budget    {summary(staged)}")
    print(f"  accounting only        {summary(booked)}")
    added = statistics.median(staged) - statistics.median(bare)
    print(f"  added by the checks    p50 {added:.3f} ms (4 rate windows + 3 budgets: 1 admit + 1 settle)")
    added = statistics.median(booked) - statistics.median(bare)
    print(f"  added by accounting    p50 {added:.3f} ms (no limits: price, count, a journal line; batched)")
    bare_cpu = await cpu_ms_per_request(upstream, tenant, args.requests)
    for name, handler in (("rate limit + budget", chain), ("accounting only", accounting)):
        cpu = await cpu_ms_per_request(handler, tenant, args.requests) - bare_cpu
        print(f"  CPU per request, {name}: {cpu:.3f} ms")
    await state.close()


if __name__ == "__main__":
    asyncio.run(main())
