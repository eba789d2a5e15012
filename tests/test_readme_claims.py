"""What README.md promises about responses, checked through HTTP: the rate-limit and cost headers, and
a semantic cache that works with retrieval off (it is a policy field, nothing in gateway.yaml)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    ACME_KEY,
    UPSTREAM_SECRET,
    MockServer,
    RunningGateway,
    gateway_with,
)

README = Path(__file__).resolve().parents[1] / "README.md"
RATE_HEADERS = [
    f"x-ratelimit-{field}-{kind}"
    for field in ("limit", "remaining", "reset")
    for kind in ("requests", "tokens")
]


@pytest.fixture
def limited(
    tmp_path: Path, upstream: MockServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningGateway]:
    """acme with a rate limit and the cache on, no budget; retrieval off for the whole gateway."""
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    config = {"pricing": {"gpt-mock": {"input_per_1k": 0.5, "output_per_1k": 1.5}}}
    acme = {"rate_limit": {"enabled": True, "rpm": 600, "tpm": 200_000}, "cache": {"enabled": True}}
    with gateway_with(tmp_path, upstream, config, acme) as running:
        yield running


def ask(gateway: RunningGateway, content: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {ACME_KEY}"},
        json={"model": "gpt-mock", "messages": [{"role": "user", "content": content}]},
        timeout=60,
    )


def test_the_readme_makes_the_claims_checked_here() -> None:
    text = " ".join(README.read_text().split())
    assert "With a rate limit on, every response carries OpenAI's" in text
    assert "every answer from a priced model carries `x-gateway-cost-usd`, with or without a budget" in text
    assert "needs retrieval.enabled in gateway.yaml" not in text


def test_rate_limit_and_cost_headers_without_a_budget(limited: RunningGateway) -> None:
    answered = ask(limited, "How long is the warranty on the X200?")
    assert answered.status_code == 200, answered.text
    for name in RATE_HEADERS:
        assert name in answered.headers, f"{name} missing: {dict(answered.headers)}"
    assert int(answered.headers["x-ratelimit-limit-requests"]) == 600
    assert int(answered.headers["x-ratelimit-remaining-requests"]) < 600
    assert float(answered.headers["x-gateway-cost-usd"]) > 0
    assert answered.headers["x-request-id"] and float(answered.headers["x-gateway-overhead-ms"]) >= 0


def test_the_semantic_cache_works_with_retrieval_off(limited: RunningGateway) -> None:
    first = ask(limited, "What is the speed limit in Zone B?")
    assert first.headers["x-gateway-cache"] == "miss"
    deadline = time.monotonic() + 30  # entries are written after the response is sent
    while ask(limited, "What is the speed limit in Zone B?").headers["x-gateway-cache"] != "hit":
        assert time.monotonic() < deadline, "the first answer was never stored"
        time.sleep(0.05)
    similar = ask(limited, "What is the speed limit for Zone B?")
    assert similar.headers["x-gateway-cache"] == "semantic-hit", dict(similar.headers)
    assert (
        similar.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    )
    assert len(limited.upstream.requests()) == 1
