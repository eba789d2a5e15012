"""Accuracy of shared rate limits: two OS processes, each an asyncio loop with 100 clients
hammering one Redis well over the limit for several windows.

Every admitted request is stamped with Redis' clock (the time it was decided), so windows are
measured on the same clock the limiter used: no sliding window may hold more than the limit,
and each full window must admit at least 99% of it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid

import pytest

from gateway.state import RateCheck, make_state

REDIS_URL = "redis://127.0.0.1:6379/15"
LIMIT = 1000
WINDOW_S = 1.0
WINDOWS = 4
CLIENTS_PER_PROCESS = 100


async def _hammer(key: str, start_at: float, seconds: float) -> list[int]:
    state = make_state(REDIS_URL)
    check = RateCheck(key, LIMIT, 1, WINDOW_S)
    admitted: list[int] = []
    await asyncio.sleep(max(0.0, start_at - time.time()))
    stop_at = start_at + seconds

    async def client() -> None:
        while time.time() < stop_at:
            verdict = await state.admit([check], [])
            if verdict.allowed:
                admitted.append(verdict.now_us)
            else:
                # A real client backs off; a short one keeps the pressure far above the limit.
                await asyncio.sleep(min(verdict.rates[0].retry_after_s, 0.005))

    await asyncio.gather(*(client() for _ in range(CLIENTS_PER_PROCESS)))
    await state.close()
    return admitted


def _worker(args: tuple[str, float, float]) -> list[int]:
    return asyncio.run(_hammer(*args))


async def _redis_up() -> bool:
    state = make_state(REDIS_URL)
    try:
        return await state.ping()
    finally:
        await state.close()


def max_in_any_window(times_us: list[int], window_us: int) -> int:
    """The most entries inside any half-open window [t, t + window) starting at an entry."""
    best, lo = 0, 0
    for hi, t in enumerate(times_us):
        while times_us[lo] <= t - window_us:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_two_processes_share_one_limit_exactly() -> None:
    if not asyncio.run(_redis_up()):
        pytest.skip("no Redis on 127.0.0.1:6379")
    key = "{acc" + uuid.uuid4().hex[:8] + "}:rpm"
    seconds = WINDOWS * WINDOW_S + 0.5
    start_at = time.time() + 1.5  # both processes are up and connected before the start
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_worker, [(key, start_at, seconds)] * 2)
    assert all(results), "both processes must have been admitted some requests"
    times = sorted(results[0] + results[1])
    window_us = int(WINDOW_S * 1_000_000)
    assert max_in_any_window(times, window_us) <= LIMIT
    first = times[0]
    per_window = [
        sum(1 for t in times if first + i * window_us <= t < first + (i + 1) * window_us)
        for i in range(WINDOWS)
    ]
    print(
        f"admitted per {WINDOW_S}s window (limit {LIMIT}): {per_window}; "
        f"by process: {[len(r) for r in results]}"
    )
    assert min(per_window) >= 0.99 * LIMIT, per_window
