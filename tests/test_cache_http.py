"""The cache in the real chain: exact and semantic hits, bypass, streams from JSON fills, tenant isolation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.conftest import (
    ACME_KEY,
    OTHER_KEY,
    UPSTREAM_SECRET,
    MockServer,
    RunningGateway,
    gateway_in_thread,
    update_yaml,
    write_gateway_files,
)

CHAT = "/v1/chat/completions"


@pytest.fixture
def cached(tmp_path: Path, upstream: MockServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningGateway]:
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    # retrieval.enabled loads the embedder the semantic cache needs; no tenant retrieves here.
    config_path = write_gateway_files(tmp_path, upstream.base, retrieval={"enabled": True})
    for tenant in ("acme", "other"):
        path = tmp_path / "policies" / f"{tenant}.yaml"
        update_yaml(
            path, cache={"enabled": True}, models=[*yaml.safe_load(path.read_text())["models"], "gpt-mock"]
        )
    with gateway_in_thread(config_path, upstream) as running:
        yield running


def ask(gateway: RunningGateway, content: str, key: str = ACME_KEY, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}{CHAT}",
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=60,
        json={"model": "gpt-mock", "messages": [{"role": "user", "content": content}]},
    )


def wait_for_store(gateway: RunningGateway, content: str) -> None:
    """Entries are written after the response is sent: poll until the question is an exact hit
    (a hit stores nothing and calls no upstream, so polling changes nothing the test checks)."""
    deadline = time.monotonic() + 10
    while ask(gateway, content).headers["x-gateway-cache"] != "hit":
        assert time.monotonic() < deadline, f"{content!r} was never stored"
        time.sleep(0.02)


def test_exact_then_semantic_hit_without_upstream_calls(cached: RunningGateway) -> None:
    first = ask(cached, "What is the speed limit in Zone B?")
    assert first.headers["x-gateway-cache"] == "miss"
    wait_for_store(cached, "What is the speed limit in Zone B?")
    again = ask(cached, "What is the speed limit in Zone B?")
    assert again.headers["x-gateway-cache"] == "hit"
    assert (
        again.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    )
    similar = ask(cached, "What is the speed limit for Zone B?")
    assert similar.headers["x-gateway-cache"] == "semantic-hit"
    assert float(similar.headers["x-gateway-cache-similarity"]) >= 0.98
    assert len(cached.upstream.requests()) == 1
    bypass = ask(cached, "What is the speed limit in Zone B?", **{"Cache-Control": "no-cache"})
    assert bypass.headers["x-gateway-cache"] == "bypass" and len(cached.upstream.requests()) == 2


def test_a_rejected_paraphrase_is_a_miss_and_counted_apart(cached: RunningGateway) -> None:
    ask(cached, "When is the chart preparation time for train no. 19708?")
    wait_for_store(cached, "When is the chart preparation time for train no. 19708?")
    other_train = ask(cached, "When is the chart preparation time for train no. 19707?")
    # Close enough for cosine, but another train: answered by the model, not from the cache.
    assert other_train.headers["x-gateway-cache"] == "miss"
    assert float(other_train.headers["x-gateway-cache-similarity"]) >= 0.97
    assert len(cached.upstream.requests()) == 2
    metrics = httpx.get(f"{cached.url}/metrics").text
    assert 'rag_gateway_cache_requests_total{outcome="paraphrase-rejected",tenant="acme"} 1.0' in metrics


def test_streaming_request_replayed_from_a_json_fill(cached: RunningGateway) -> None:
    ask(cached, "How long is the warranty?")
    wait_for_store(cached, "How long is the warranty?")
    client = openai.OpenAI(base_url=f"{cached.url}/v1", api_key=ACME_KEY, max_retries=0)
    stream = client.chat.completions.with_raw_response.create(
        model="gpt-mock", stream=True, messages=[{"role": "user", "content": "How long is the warranty?"}]
    )
    assert stream.headers["x-gateway-cache"] == "hit"
    text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    assert text == "echo: How long is the warranty?"
    assert len(cached.upstream.requests()) == 1


def test_no_entry_is_served_to_another_tenant(cached: RunningGateway) -> None:
    ask(cached, "Where is the spare key?")
    wait_for_store(cached, "Where is the spare key?")
    other = ask(cached, "Where is the spare key?", key=OTHER_KEY)
    assert other.headers["x-gateway-cache"] == "miss"
    assert len(cached.upstream.requests()) == 2


def test_errors_are_not_cached(cached: RunningGateway) -> None:
    cached.upstream.script("mock-1", "status:400")
    assert ask(cached, "Is this cached?").status_code == 400
    # Nothing can be polled for here (the point is that no entry appears): give a wrong write the
    # time the other tests' writes take.
    time.sleep(0.3)
    retry = ask(cached, "Is this cached?")
    assert retry.status_code == 200 and retry.headers["x-gateway-cache"] == "miss"


def test_a_tenant_with_the_judge_is_served_a_reworded_question(
    tmp_path: Path, upstream: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    config_path = write_gateway_files(tmp_path, upstream.base, retrieval={"enabled": True})
    path = tmp_path / "policies" / "acme.yaml"
    update_yaml(
        path,
        cache={"enabled": True, "paraphrase_check": "judge"},
        models=[*yaml.safe_load(path.read_text())["models"], "gpt-mock"],
    )
    with gateway_in_thread(config_path, upstream) as gateway:
        ask(gateway, "What is the boiling point of water at sea level?")
        wait_for_store(gateway, "What is the boiling point of water at sea level?")
        reworded = ask(gateway, "At sea level, what is water's boiling point?")
        assert reworded.headers["x-gateway-cache"] == "semantic-hit"
        freezing = ask(gateway, "What is the freezing point of water at sea level?")
        assert freezing.headers["x-gateway-cache"] == "miss"
        assert len(gateway.upstream.requests()) == 2
