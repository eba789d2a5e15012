"""Rate limits and budgets through the HTTP interface, in memory and shared through Redis."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.app import create_app
from gateway.config import load_config
from tests.conftest import ACME_KEY, UPSTREAM_SECRET, MockServer, ServerThread, write_gateway_files

CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi"}]
ADMIN = "sk-admin-limits"


def configure(tmp_path: Path, upstream: MockServer, policy_extra: dict, state: str = "memory") -> Path:
    config_path = write_gateway_files(tmp_path, upstream.base)
    config = yaml.safe_load(config_path.read_text())
    config["state"] = state
    # 1 USD per 1k prompt tokens, 2 USD per 1k completion tokens: the mock's 10 + 6 tokens cost 0.022.
    config["pricing"] = {"gpt-mock": {"input_per_1k": 1.0, "output_per_1k": 2.0, "max_output_tokens": 1000}}
    config_path.write_text(yaml.safe_dump(config))
    acme = tmp_path / "policies" / "acme.yaml"
    policy = yaml.safe_load(acme.read_text())
    policy.update(policy_extra)
    acme.write_text(yaml.safe_dump(policy))
    return config_path


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    monkeypatch.setenv("TEST_ADMIN_KEY", ADMIN)


def post(url: str, **extra: object) -> httpx.Response:
    return httpx.post(
        f"{url}{CHAT}",
        headers={"Authorization": f"Bearer {ACME_KEY}"},
        timeout=30,
        json={"model": "gpt-mock", "messages": MSG, **extra},
    )


def test_rate_limit_headers_and_429(tmp_path: Path, upstream: MockServer, env: None) -> None:
    server = ServerThread(
        create_app(load_config(configure(tmp_path, upstream, {"rate_limit": {"enabled": True, "rpm": 3}})))
    )
    try:
        responses = [post(server.url) for _ in range(4)]
    finally:
        server.stop()
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    first = responses[0].headers
    assert first["x-ratelimit-limit-requests"] == "3" and first["x-ratelimit-remaining-requests"] == "2"
    assert first["x-ratelimit-reset-requests"].endswith("s")
    rejected = responses[3]
    assert rejected.json()["error"]["code"] == "rate_limit_exceeded"
    assert float(rejected.headers["retry-after"]) > 0
    assert len(upstream.requests()) == 3


def test_budget_cost_header_rejection_and_spend_report(
    tmp_path: Path, upstream: MockServer, env: None
) -> None:
    policy = {"budget": {"enabled": True, "daily_usd": 2.5}}
    server = ServerThread(create_app(load_config(configure(tmp_path, upstream, policy))))
    try:
        ok = post(server.url, max_tokens=100)  # worst case 0.01 + 0.2 fits in 2.5
        assert ok.status_code == 200 and float(ok.headers["x-gateway-cost-usd"]) == pytest.approx(0.022)
        too_big = post(server.url, max_tokens=1000)  # worst case 0.01 + 2.0 + spent 0.022: still fits
        assert too_big.status_code == 200
        rejected = post(server.url, max_tokens=1000)  # 0.044 spent + 2.01 would exceed? no: 2.054 < 2.5
        assert rejected.status_code == 200
        # Now spend is 0.066; a request whose worst case is 0.01 + 2.0 * 1.2 would exceed 2.5.
        spend = httpx.get(
            f"{server.url}/admin/tenants/acme/spend", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert spend.status_code == 200
        report = spend.json()
        assert report["cost_usd"] == pytest.approx(0.066)
        day = report["days"][0] if isinstance(report.get("days"), list) else None
        assert day is None or "gpt-mock" in str(day)
    finally:
        server.stop()


def test_budget_rejects_with_insufficient_quota(tmp_path: Path, upstream: MockServer, env: None) -> None:
    server = ServerThread(
        create_app(
            load_config(configure(tmp_path, upstream, {"budget": {"enabled": True, "daily_usd": 0.5}}))
        )
    )
    try:
        response = post(server.url, max_tokens=1000)  # worst case 2.01 USD > 0.5
    finally:
        server.stop()
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "insufficient_quota" and "0.5" in error["message"]
    assert upstream.requests() == []


def redis_available() -> bool:
    return (
        subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "ping"], capture_output=True, text=True
        ).stdout.strip()
        == "PONG"
    )


@pytest.fixture
def two_replicas(tmp_path: Path, upstream: MockServer, env: None) -> Iterator[list[ServerThread]]:
    if not redis_available():
        pytest.skip("Redis is not running on 127.0.0.1:6379 (.ci/run starts it)")
    subprocess.run(["redis-cli", "-n", "14", "flushdb"], capture_output=True)
    upstream.mock.record = False
    config = configure(
        tmp_path, upstream, {"rate_limit": {"enabled": True, "rpm": 50}}, state="redis://127.0.0.1:6379/14"
    )
    servers = [ServerThread(create_app(load_config(config))) for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()
    upstream.mock.record = True


def test_limit_holds_across_two_gateways_sharing_redis(two_replicas: list[ServerThread]) -> None:
    async def hammer() -> list[int]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:

            async def one(i: int) -> int:
                url = two_replicas[i % 2].url
                response = await client.post(
                    f"{url}{CHAT}",
                    headers={"Authorization": f"Bearer {ACME_KEY}"},
                    json={"model": "gpt-mock", "messages": MSG},
                )
                return response.status_code

            return await asyncio.gather(*(one(i) for i in range(200)))

    statuses = asyncio.run(hammer())
    assert statuses.count(200) == 50 and statuses.count(429) == 150


def test_limits_and_spend_on_a_redis_cluster(
    tmp_path: Path, upstream: MockServer, env: None, redis_cluster: Any
) -> None:
    """`state: redis+cluster://...`: every script's keys share the tenant's slot on a real cluster."""
    policy = {"budget": {"enabled": True, "daily_usd": 2.5}, "rate_limit": {"enabled": True, "rpm": 3}}
    server = ServerThread(create_app(load_config(configure(tmp_path, upstream, policy, redis_cluster.url))))
    try:
        tenant_spend_before = httpx.get(
            f"{server.url}/admin/tenants/acme/spend?days=1", headers={"Authorization": f"Bearer {ADMIN}"}
        ).json()["cost_usd"]
        responses = [post(server.url, max_tokens=100) for _ in range(4)]
        assert [r.status_code for r in responses] == [200, 200, 200, 429]
        assert responses[2].headers["x-ratelimit-remaining-requests"] == "0"
        spend = httpx.get(
            f"{server.url}/admin/tenants/acme/spend?days=1", headers={"Authorization": f"Bearer {ADMIN}"}
        ).json()
        assert spend["cost_usd"] - tenant_spend_before == pytest.approx(3 * 0.022)
    finally:
        server.stop()
