"""Router behaviour with fake clients: retries, Retry-After, circuit breaker, weights, fallbacks."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import orjson
import pytest

from gateway.config import GatewayConfig
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.policy import Policy
from gateway.response import GatewayResponse
from gateway.upstreams.base import UpstreamFailure
from gateway.upstreams.router import Router


class FakeClient:
    """Answers per deployment model from a script of outcomes; records every call."""

    def __init__(self, scripts: dict[str, list[str]] | None = None) -> None:
        self.scripts = {k: list(v) for k, v in (scripts or {}).items()}
        self.calls: list[str] = []

    async def generate(self, deployment: Any, request: Any, headers: Any = None) -> GatewayResponse:
        self.calls.append(deployment.model)
        outcome = (
            self.scripts.get(deployment.model, []).pop(0) if self.scripts.get(deployment.model) else "ok"
        )
        if outcome == "ok":
            return GatewayResponse(raw=orjson.dumps({"served_by": deployment.model}))
        if outcome == "connect":
            raise UpstreamFailure("connect", "refused")
        status, _, retry_after = outcome.partition("/")
        raise UpstreamFailure(
            "http",
            f"HTTP {status}",
            status=int(status),
            body=b'{"error": {"message": "m"}}',
            retry_after_s=float(retry_after) if retry_after else None,
        )

    async def embeddings(self, deployment: Any, request: Any, headers: Any = None) -> GatewayResponse:
        raise AssertionError("not used")

    async def close(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(models: list[dict], scripts: dict[str, list[str]] | None = None, **router: Any):
    config = GatewayConfig.model_validate({"models": models, "router": {"backoff_base_s": 0.5, **router}})
    client = FakeClient(scripts)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    clock = Clock()
    r = Router(config, {"http": client, "local": client}, clock=clock, sleep=sleep, rng=random.Random(1))
    return r, client, sleeps, clock


def ctx(model: str, allowed: list[str] | None = None) -> RequestContext:
    policy = Policy(tenant="t", models=allowed or ["*"])
    return RequestContext.internal(policy, {"model": model, "messages": []}, "r", "k")


def dep(model: str, **extra: Any) -> dict:
    return {"provider": "openai", "model": model, **extra}


async def test_retries_with_backoff_then_succeeds() -> None:
    router, client, sleeps, _ = make(
        [{"name": "m", "deployments": [dep("a", max_retries=3)]}], {"a": ["500", "connect", "ok"]}
    )
    c = ctx("m")
    response = await router.call(c)
    assert response.json() == {"served_by": "a"}
    assert client.calls == ["a", "a", "a"]
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.5 and 0 <= sleeps[1] <= 1.0  # full jitter under the doubling ceiling
    assert [a.outcome for a in c.attempts] == ["retry", "retry", "ok"]


async def test_retry_after_header_is_honoured() -> None:
    router, _, sleeps, _ = make([{"name": "m", "deployments": [dep("a")]}], {"a": ["429/2.5", "ok"]})
    await router.call(ctx("m"))
    assert sleeps == [2.5]


async def test_long_retry_after_moves_to_next_deployment_instead_of_waiting() -> None:
    router, _client, sleeps, _ = make(
        [{"name": "m", "deployments": [dep("a", weight=1000), dep("b", weight=0.001)]}],
        {"a": ["429/120"]},
        max_retry_after_s=10,
    )
    response = await router.call(ctx("m"))
    assert response.json() == {"served_by": "b"} and sleeps == []


async def test_client_errors_are_not_retried() -> None:
    router, client, _, _ = make(
        [
            {"name": "m", "deployments": [dep("a")], "fallbacks": ["f"]},
            {"name": "f", "deployments": [dep("fb")]},
        ],
        {"a": ["400"]},
    )
    with pytest.raises(GatewayError) as info:
        await router.call(ctx("m"))
    assert info.value.status == 400 and client.calls == ["a"]


async def test_fallback_model_after_all_deployments_fail() -> None:
    router, client, _, _ = make(
        [
            {"name": "m", "deployments": [dep("a", max_retries=1)], "fallbacks": ["f"]},
            {"name": "f", "deployments": [dep("fb")]},
        ],
        {"a": ["503", "503"]},
    )
    c = ctx("m")
    response = await router.call(c)
    assert response.json() == {"served_by": "fb"}
    assert client.calls == ["a", "a", "fb"]
    assert any(d.stage == "router" and d.action == "fallback" for d in c.decisions)


async def test_fallback_the_tenant_may_not_use_is_skipped() -> None:
    router, client, _, _ = make(
        [
            {"name": "m", "deployments": [dep("a", max_retries=0)], "fallbacks": ["f"]},
            {"name": "f", "deployments": [dep("fb")]},
        ],
        {"a": ["503"]},
    )
    with pytest.raises(GatewayError) as info:
        await router.call(ctx("m", allowed=["m"]))
    assert info.value.status == 502 and client.calls == ["a"]


async def test_circuit_breaker_ejects_then_half_opens() -> None:
    router, client, _, clock = make(
        [{"name": "m", "deployments": [dep("a", max_retries=0)]}],
        {"a": ["500", "500", "500", "ok", "ok"]},
        circuit_breaker_failures=3,
        circuit_breaker_cooldown_s=30,
    )
    for _ in range(3):
        with pytest.raises(GatewayError):
            await router.call(ctx("m"))
    assert client.calls == ["a", "a", "a"]
    with pytest.raises(GatewayError) as info:
        await router.call(ctx("m"))  # ejected: no upstream call at all
    assert info.value.status == 503 and client.calls == ["a", "a", "a"]
    clock.now += 31
    assert (await router.call(ctx("m"))).json() == {"served_by": "a"}  # half-open trial succeeds


async def test_ejected_deployment_traffic_goes_to_the_healthy_one() -> None:
    router, client, _, _clock = make(
        [
            {
                "name": "m",
                "deployments": [dep("a", max_retries=0, weight=1), dep("b", max_retries=0, weight=1)],
            }
        ],
        {"a": ["500"] * 50},
        circuit_breaker_failures=2,
    )
    for _ in range(20):
        assert (await router.call(ctx("m"))).json() == {"served_by": "b"}
    assert client.calls.count("a") == 2  # tried until ejected, then left alone


async def test_weighted_balancing_follows_weights() -> None:
    router, client, _, _ = make(
        [{"name": "m", "deployments": [dep("heavy", weight=3), dep("light", weight=1)]}]
    )
    for _ in range(2000):
        await router.call(ctx("m"))
    counts = Counter(client.calls)
    share = counts["heavy"] / 2000
    assert 0.70 < share < 0.80, counts  # 3:1 weights give 75%
