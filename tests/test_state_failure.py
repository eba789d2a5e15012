"""Redis going away and coming back: a private redis-server on its own port is stopped and restarted.

Nothing may crash: calls fail fast with StateUnavailable, the stages serve (fail_open) or answer
503 (fail_closed), and the connection pool reconnects by itself once Redis is back.
"""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from gateway.errors import GatewayError
from gateway.state import RateCheck, StateUnavailable
from gateway.state.redis_backend import RedisState
from gateway.state.settings import RateLimitPolicy
from tests.conftest import PrivateRedis, free_port
from tests.test_admission import make_ctx, ok_handler, stage

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


async def test_backend_fails_fast_and_reconnects(private_redis: PrivateRedis) -> None:
    state = RedisState(f"redis://127.0.0.1:{private_redis.port}/0", down_for_s=0.2)
    check = RateCheck("{t}:rpm", 100, 1)
    assert (await state.admit([check], [])).allowed
    private_redis.stop()
    started = time.perf_counter()
    for _ in range(20):
        with pytest.raises(StateUnavailable):
            await state.admit([check], [])
    assert time.perf_counter() - started < 2.0  # fast failures, not 20 timeouts
    assert not await state.ping()
    private_redis.start()  # same port, empty: the script cache is gone too (NOSCRIPT path)
    await asyncio.sleep(0.25)
    verdict = await state.admit([check], [])
    assert verdict.allowed and verdict.rates[0].used == 1
    await state.close()


async def test_unreachable_port_is_unavailable_not_a_crash() -> None:
    state = RedisState(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StateUnavailable):
        await state.admit([RateCheck("{t}:rpm", 1, 1)], [])
    await state.close()


async def test_stage_fail_open_and_fail_closed(private_redis: PrivateRedis) -> None:
    state = RedisState(f"redis://127.0.0.1:{private_redis.port}/0", down_for_s=0.2)
    open_stage = stage(RateLimitPolicy(enabled=True, rpm=10), state=state)
    closed_stage = stage(RateLimitPolicy(enabled=True, rpm=10, on_state_error="fail_closed"), state=state)
    ctx = make_ctx()
    await open_stage.handle(ctx, ok_handler())
    assert ctx.response_headers["x-ratelimit-remaining-requests"] == "9"
    private_redis.stop()

    ctx = make_ctx()
    response = await open_stage.handle(ctx, ok_handler())
    assert response.status == 200
    assert any(d.stage == "admission" and d.action == "fail_open" for d in ctx.decisions)
    assert "x-ratelimit-remaining-requests" not in ctx.response_headers

    ctx = make_ctx()
    with pytest.raises(GatewayError) as raised:
        await closed_stage.handle(ctx, ok_handler())
    assert raised.value.status == 503 and raised.value.code == "state_unavailable"

    private_redis.start()
    await asyncio.sleep(0.25)
    ctx = make_ctx()
    await closed_stage.handle(ctx, ok_handler())
    assert ctx.response_headers["x-ratelimit-remaining-requests"] == "9"  # a fresh Redis
    await state.close()
