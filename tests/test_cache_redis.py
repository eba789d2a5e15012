"""The cache in Redis mode: two stores on one Redis act as two replicas; Redis stops and comes back.

Each test runs against a private redis-server on a free port, started and stopped here.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.cache.redis_store import RedisCacheStore
from gateway.cache.settings import CachePolicy
from gateway.cache.store import make_cache_store
from gateway.errors import GatewayError
from gateway.retrieval.embedder import LocalMiniLMEmbedder
from middleware.cache import CacheStage
from tests.conftest import PrivateRedis
from tests.test_cache_support import Upstream, answer_text, make_ctx

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


@pytest.fixture(scope="module")
def embedder() -> LocalMiniLMEmbedder:
    return LocalMiniLMEmbedder()


@pytest.fixture
async def replicas(private_redis: PrivateRedis) -> AsyncIterator[tuple[RedisCacheStore, RedisCacheStore]]:
    a, b = make_cache_store(private_redis.url), make_cache_store(private_redis.url)
    assert isinstance(a, RedisCacheStore) and isinstance(b, RedisCacheStore)
    yield a, b
    await a.close()
    await b.close()


def stage_on(store: Any, embedder: LocalMiniLMEmbedder, **settings: Any) -> CacheStage:
    return CacheStage(CachePolicy(enabled=True, **settings), store, embedder)


async def ask(stage: CacheStage, upstream: Any, question: str, **kwargs: Any) -> tuple[Any, str]:
    ctx = make_ctx(question, **kwargs)
    text = await answer_text(await stage.handle(ctx, upstream))
    await stage.drain()
    return ctx, text


async def test_an_answer_cached_by_one_replica_is_served_by_another(replicas, embedder) -> None:
    await shared_by_replicas(replicas, embedder)


async def test_replicas_share_the_cache_on_a_redis_cluster(redis_cluster, embedder) -> None:
    stores = make_cache_store(redis_cluster.url), make_cache_store(redis_cluster.url)
    try:
        await shared_by_replicas(stores, embedder)
    finally:
        for store in stores:
            await store.close()


async def shared_by_replicas(replicas: tuple[Any, Any], embedder: LocalMiniLMEmbedder) -> None:
    one, two = stage_on(replicas[0], embedder), stage_on(replicas[1], embedder)
    upstream = Upstream("Use the 'Forgot password' link.")
    await ask(one, upstream, "How do I reset my password?")
    ctx, text = await ask(two, upstream, "How do I reset my password?")
    assert ctx.response_headers["x-gateway-cache"] == "hit"
    ctx, text = await ask(two, upstream, "How can I reset my password?", stream=True)
    assert ctx.response_headers["x-gateway-cache"] == "semantic-hit"
    assert text == "Use the 'Forgot password' link." and upstream.calls == 1
    # And the other way round, with an entry replica two stores after replica one already synced.
    await ask(two, upstream, "What is the refund policy for annual plans?")
    ctx, _ = await ask(one, upstream, "What is your refund policy for annual plans?")
    assert ctx.response_headers["x-gateway-cache"] == "semantic-hit" and upstream.calls == 2


async def test_tenants_are_isolated_in_redis(replicas, embedder) -> None:
    one, two = stage_on(replicas[0], embedder), stage_on(replicas[1], embedder)
    await ask(one, Upstream("t only"), "How do I reset my password?", tenant="t")
    upstream = Upstream("u's answer")
    for question in ("How do I reset my password?", "How can I reset my password?"):
        ctx, text = await ask(two, upstream, question, tenant="u", headers={"cache-control": "no-store"})
        assert ctx.response_headers["x-gateway-cache"] == "bypass"
        ctx, text = await ask(two, upstream, question, tenant="u")
        assert text == "u's answer"
    assert upstream.calls == 3  # the last one hit u's own entry, never t's


async def test_ttl_and_eviction_in_redis(replicas, embedder) -> None:
    stage = stage_on(replicas[0], embedder, ttl_s=1, max_entries_per_tenant=2)
    upstream = Upstream()
    for question in ("What is the capital of France?", "Who wrote Hamlet?", "How far is the Moon?"):
        await ask(stage, upstream, question)
    ctx, _ = await ask(stage, upstream, "What is the capital of France?")  # evicted by the third
    assert ctx.response_headers["x-gateway-cache"] == "miss"
    ctx, _ = await ask(stage, upstream, "How far is the Moon?")
    assert ctx.response_headers["x-gateway-cache"] == "hit"
    await asyncio.sleep(1.2)
    ctx, _ = await ask(
        stage_on(replicas[1], embedder, ttl_s=1, max_entries_per_tenant=2), upstream, "How far is the Moon?"
    )
    assert ctx.response_headers["x-gateway-cache"] == "miss"


async def test_redis_down_fail_open_then_reconnects(embedder) -> None:
    server = PrivateRedis()
    server.start()
    store = RedisCacheStore(server.url, down_for_s=0.05, timeout_s=0.2)
    stage = stage_on(store, embedder)
    try:
        upstream = Upstream()
        await ask(stage, upstream, "How do I reset my password?")
        server.stop()
        started = time.perf_counter()
        ctx, text = await ask(stage, upstream, "How do I reset my password?")
        assert text and upstream.calls == 2
        assert ctx.response_headers["x-gateway-cache"] == "bypass"
        assert ctx.decisions[-1].action == "unavailable"
        assert time.perf_counter() - started < 1.0
        server.start()  # same port, empty data
        await asyncio.sleep(0.1)
        await ask(stage, upstream, "How do I reset my password?")
        ctx, _ = await ask(stage, upstream, "How do I reset my password?")
        assert ctx.response_headers["x-gateway-cache"] == "hit" and upstream.calls == 3
    finally:
        server.stop()
        await store.close()


async def test_redis_down_fail_closed_answers_503(embedder) -> None:
    server = PrivateRedis()
    server.start()
    store = RedisCacheStore(server.url, down_for_s=0.05, timeout_s=0.2)
    stage = stage_on(store, embedder, on_state_error="fail_closed")
    try:
        server.stop()
        upstream = Upstream()
        with pytest.raises(GatewayError) as err:
            await stage.handle(make_ctx("Hello?"), upstream)
        assert err.value.status == 503 and err.value.code == "cache_unavailable"
        assert upstream.calls == 0
        server.start()
        await asyncio.sleep(0.1)
        ctx, _ = await ask(stage, upstream, "Hello?")
        assert ctx.response_headers["x-gateway-cache"] == "miss"
    finally:
        server.stop()
        await store.close()
