"""The state backends: sliding windows, all-or-nothing admission, reserve-then-settle, reports,
leases that release a dead process's reservations, and settles applied at most once.

Every test runs against the memory backend and against the real Redis on 127.0.0.1:6379 (db 15,
with a fresh tenant name per test), which is skipped when that Redis is not running.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from datetime import date

import pytest

from gateway.state import (
    BudgetCheck,
    RateCheck,
    Settlement,
    SpendRecord,
    StateBackend,
    Ticket,
    make_state,
    spend_report,
)
from gateway.state.memory import MemoryState
from gateway.state.redis_connect import parse
from tests.conftest import until

REDIS_URL = "redis://127.0.0.1:6379/15"
FAR = 4_000_000_000  # an expiry far in the future (unix seconds)


async def _redis_up() -> bool:
    state = make_state(REDIS_URL)
    try:
        return await state.ping()
    finally:
        await state.close()


@pytest.fixture(params=["memory", "redis", "cluster", "sentinel"])
async def backend_url(request: pytest.FixtureRequest) -> str:
    """The same contract on every backend: memory, one Redis, a 3-master Redis Cluster, and the
    primary a Sentinel names (both real, started by tests/conftest.py)."""
    if request.param == "memory":
        return "memory"
    if request.param == "cluster":
        return request.getfixturevalue("redis_cluster").url
    if request.param == "sentinel":
        return request.getfixturevalue("redis_sentinel").url
    if not await _redis_up():
        pytest.skip("no Redis on 127.0.0.1:6379")
    return REDIS_URL


@pytest.fixture
async def state(backend_url: str) -> AsyncIterator[StateBackend]:
    backend = make_state(backend_url)
    yield backend
    await backend.close()


@pytest.fixture
async def short_lease(backend_url: str) -> AsyncIterator[StateBackend]:
    """A backend whose reservations lapse 0.3 s after their last renewal."""
    backend = make_state(backend_url, lease_s=0.3)
    yield backend
    await backend.close()


def tenant() -> str:
    return "{t" + uuid.uuid4().hex[:10] + "}"


def test_make_state_rejects_unknown_urls() -> None:
    assert isinstance(make_state("memory"), MemoryState)
    with pytest.raises(ValueError, match="redis://"):
        make_state("postgres://x")


def test_state_urls_name_one_server_a_cluster_or_a_sentinel_primary() -> None:
    single = parse("valkeys://user:secret@cache.internal:6380/2")
    assert (
        single.kind == "single"
        and single.tls
        and single.single_url == "rediss://user:secret@cache.internal:6380/2"
    )
    assert "secret" not in single.redacted()
    cluster = parse("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2")
    assert cluster.kind == "cluster" and not cluster.tls and cluster.password == "pw"
    assert cluster.hosts == (("10.0.0.1", 7000), ("10.0.0.2", 6379))
    sentinel = parse("rediss+sentinel://s1:26379,s2/mymaster/3")
    assert (sentinel.kind, sentinel.tls, sentinel.service, sentinel.db) == ("sentinel", True, "mymaster", 3)
    assert sentinel.hosts == (("s1", 26379), ("s2", 26379)) and "pw" not in cluster.redacted()
    for bad, says in [
        ("redis+sentinel://s1:26379", "service name"),
        ("redis+cluster://h:7000/1", "only database 0"),
        ("redis+mesh://h:1", "unknown URL scheme"),
        ("redis+cluster://h:port", "no valid port"),
        ("localhost:6379", "redis://"),
    ]:
        with pytest.raises(ValueError, match=says):
            parse(bad)


async def test_window_admits_exactly_the_limit_then_frees(state: StateBackend) -> None:
    check = RateCheck(f"{tenant()}:rpm", limit=5, cost=1, window_s=0.4)
    verdicts = [await state.admit([check], []) for _ in range(7)]
    assert [v.allowed for v in verdicts] == [True] * 5 + [False] * 2
    assert verdicts[4].rates[0].remaining == 0
    denied = verdicts[5]
    assert denied.ticket is None and denied.denied is denied.rates[0]
    assert 0.2 < denied.rates[0].retry_after_s <= 0.4
    assert 0.2 < denied.rates[0].reset_s <= 0.4
    await asyncio.sleep(denied.rates[0].retry_after_s + 0.02)
    again = await state.admit([check], [])
    assert again.allowed


async def test_admission_is_all_or_nothing(state: StateBackend) -> None:
    t = tenant()
    rpm = RateCheck(f"{t}:rpm", limit=10, cost=1)
    budget = BudgetCheck(f"{t}:usd", limit_nanos=100, amount_nanos=60, expires_at=FAR)
    assert (await state.admit([rpm], [budget])).allowed
    second = await state.admit([rpm], [budget])  # 60 + 60 > 100: the budget says no
    assert not second.allowed and second.denied is second.budgets[0]
    assert second.budgets[0].spent_nanos == 60
    third = await state.admit([rpm], [])
    assert third.rates[0].used == 2  # the denied request took no request slot
    assert await state.ledger(f"{t}:usd") == 60


async def test_token_correction_replaces_the_estimate(state: StateBackend) -> None:
    t = tenant()
    tpm = RateCheck(f"{t}:tpm", limit=100, cost=30, window_s=0.5, kind="tokens")
    verdict = await state.admit([tpm], [])
    assert verdict.ticket is not None
    await state.settle(Settlement(t.strip("{}"), verdict.ticket, tokens=80))  # 30 estimated, 80 used
    probe = await state.admit([RateCheck(tpm.key, 100, 30, 0.5, "tokens")], [])
    assert not probe.allowed and probe.rates[0].used == 80
    await asyncio.sleep(0.55)  # the correction leaves the window with its request
    after = await state.admit([RateCheck(tpm.key, 100, 30, 0.5, "tokens")], [])
    assert after.allowed and after.rates[0].used == 30


async def test_too_large_a_request_is_denied_for_good(state: StateBackend) -> None:
    verdict = await state.admit([RateCheck(f"{tenant()}:tpm", 10, 11, 60, "tokens")], [])
    assert not verdict.allowed


async def test_reserve_then_settle_with_1000_concurrent_requests(state: StateBackend) -> None:
    t = tenant()
    day = "2026-11-28"
    reserve = 5_000
    limit = 1000 * reserve
    costs: list[int] = []

    async def one(i: int) -> None:
        budget = BudgetCheck(f"{t}:usd:day", limit_nanos=limit, amount_nanos=reserve, expires_at=FAR)
        verdict = await state.admit([RateCheck(f"{t}:rpm", 10_000, 1)], [budget])
        assert verdict.allowed and verdict.ticket is not None
        await asyncio.sleep(random.random() / 100)
        cost = random.randint(0, reserve)
        costs.append(cost)
        record = SpendRecord(t.strip("{}"), day, f"model-{i % 3}", f"key-{i % 2}", FAR)
        await state.settle(Settlement(t.strip("{}"), verdict.ticket, cost_nanos=cost, records=(record,)))

    await asyncio.gather(*(one(i) for i in range(1000)))
    assert await state.ledger(f"{t}:usd:day") == sum(costs)
    report = await spend_report(state, t.strip("{}"), days=2, today=date(2026, 11, 29))
    assert report["requests"] == 1000
    assert round(report["cost_usd"] * 1e9) == sum(costs)
    assert report["days"][0]["requests"] == 0 and report["days"][1]["date"] == day
    assert set(report["models"]) == {"model-0", "model-1", "model-2"}
    assert set(report["days"][1]["keys"]) == {"key-0", "key-1"}


async def test_budget_denies_what_would_overspend_under_concurrency(state: StateBackend) -> None:
    t = tenant()
    budget = BudgetCheck(f"{t}:usd", limit_nanos=1000, amount_nanos=30, expires_at=FAR)
    verdicts = await asyncio.gather(*(state.admit([], [budget]) for _ in range(100)))
    assert sum(v.allowed for v in verdicts) == 33  # 33 * 30 <= 1000 < 34 * 30


async def test_soft_alert_is_reported_once(state: StateBackend) -> None:
    t = tenant()
    budget = BudgetCheck(f"{t}:usd", limit_nanos=100, amount_nanos=10, expires_at=FAR, alert_nanos=80)
    alerts = [any(b.alert for b in (await state.admit([], [budget])).budgets) for _ in range(10)]
    assert alerts == [False] * 7 + [True] + [False] * 2


async def test_records_are_kept_until_deleted_and_isolated_by_key(state: StateBackend) -> None:
    key = tenant() + ":resp_1"
    assert await state.get_record(key) is None
    await state.put_record(key, b'{"id": "resp_1"}', ttl_s=60)
    await state.put_record(key + "x", b"other", ttl_s=60)
    assert await state.get_record(key) == b'{"id": "resp_1"}'
    assert await state.delete_record(key) is True
    assert await state.get_record(key) is None
    assert await state.delete_record(key) is False
    assert await state.get_record(key + "x") == b"other"


async def test_records_expire() -> None:
    now = [1_000_000]
    memory = MemoryState(clock_us=lambda: now[0])
    await memory.put_record("k", b"v", ttl_s=10)
    now[0] += 9_000_000
    assert await memory.get_record("k") == b"v"
    now[0] += 2_000_000
    assert await memory.get_record("k") is None


async def test_a_dead_processs_reservation_lapses_with_its_lease(short_lease: StateBackend) -> None:
    t = tenant()
    budget = BudgetCheck(f"{t}:usd", limit_nanos=100, amount_nanos=60, expires_at=FAR)
    started = time.monotonic()
    assert (await short_lease.admit([], [budget])).allowed  # ...and its process never settles
    assert not (await short_lease.admit([], [budget])).allowed

    async def released() -> bool:
        return await short_lease.ledger(budget.key) == 0

    await until(released)
    assert time.monotonic() - started >= 0.25  # not before the lease ran out
    assert (await short_lease.admit([], [budget])).allowed


async def test_renewed_reservations_stay_until_settled(short_lease: StateBackend) -> None:
    t = tenant()
    budget = BudgetCheck(f"{t}:usd", limit_nanos=1000, amount_nanos=60, expires_at=FAR)
    other = BudgetCheck(f"{t}:usd:k:a", limit_nanos=1000, amount_nanos=60, expires_at=FAR)
    verdict = await short_lease.admit([], [budget, other])
    assert verdict.ticket is not None
    for _ in range(8):  # 0.8 s, well past the 0.3 s lease, renewed every 0.1 s
        await asyncio.sleep(0.1)
        await short_lease.renew([verdict.ticket])
    assert await short_lease.ledger(budget.key) == 60 and await short_lease.ledger(other.key) == 60
    assert await short_lease.settle(Settlement(t.strip("{}"), verdict.ticket, cost_nanos=25))
    assert await short_lease.ledger(budget.key) == 25 and await short_lease.ledger(other.key) == 25


async def test_a_settle_after_its_lease_lapsed_books_the_whole_cost(short_lease: StateBackend) -> None:
    t = tenant()
    budget = BudgetCheck(f"{t}:usd", limit_nanos=1000, amount_nanos=60, expires_at=FAR)
    verdict = await short_lease.admit([], [budget])
    assert verdict.ticket is not None

    async def released() -> bool:
        return await short_lease.ledger(budget.key) == 0

    await until(released)
    assert await short_lease.settle(Settlement(t.strip("{}"), verdict.ticket, cost_nanos=40))
    assert await short_lease.ledger(budget.key) == 40


async def test_a_settle_sent_twice_is_applied_once(state: StateBackend) -> None:
    t = tenant()
    name = t.strip("{}")
    budget = BudgetCheck(f"{t}:usd", limit_nanos=1000, amount_nanos=60, expires_at=FAR)
    tpm = RateCheck(f"{t}:tpm", limit=1000, cost=30, kind="tokens")
    verdict = await state.admit([tpm], [budget])
    assert verdict.ticket is not None
    record = SpendRecord(name, "2026-12-01", "m", "k", FAR)
    settlement = Settlement(name, verdict.ticket, tokens=50, cost_nanos=40, records=(record,))
    assert await state.settle(settlement) is True
    assert await state.settle(settlement) is False  # a retry of one that was applied: nothing changes
    assert await state.ledger(budget.key) == 40
    probe = await state.admit([RateCheck(tpm.key, 1000, 1, kind="tokens")], [])
    assert probe.rates[0].used == 50 + 1  # the correction applied once, plus this probe
    report = await spend_report(state, name, days=1, today=date(2026, 12, 1))
    assert report["requests"] == 1 and round(report["cost_usd"] * 1e9) == 40


async def test_an_unreserved_settle_books_its_cost_once(state: StateBackend) -> None:
    t = tenant()
    budget = BudgetCheck(f"{t}:usd", limit_nanos=1000, amount_nanos=60, expires_at=FAR)
    served_while_down = Settlement(t.strip("{}"), Ticket.unreserved((budget,)), cost_nanos=35)
    assert await state.settle(served_while_down)
    assert not await state.settle(served_while_down)
    assert await state.ledger(budget.key) == 35
    assert (await state.admit([], [budget])).budgets[0].spent_nanos == 95


@pytest.mark.parametrize("late", [False, True])
async def test_a_settle_that_ran_late_is_remembered_for_a_day(
    monkeypatch: pytest.MonkeyPatch, late: bool
) -> None:
    """Redis remembers a prompt settle's id for 10 minutes (its lost reply is retried at once) and a
    late one's (sent more than a second before Redis ran it: it was frozen) for a day."""
    if not await _redis_up():
        pytest.skip("no Redis on 127.0.0.1:6379")
    import gateway.state.redis_backend as backend

    state = make_state(REDIS_URL)
    t = tenant()
    name = t.strip("{}")
    budget = BudgetCheck(f"{t}:usd", limit_nanos=1000, amount_nanos=60, expires_at=FAR)
    verdict = await state.admit([], [budget])
    assert verdict.ticket is not None
    sent = time.time_ns() - (5_000_000_000 if late else 0)
    monkeypatch.setattr(backend.time, "time_ns", lambda: sent)
    assert await state.settle(Settlement(name, verdict.ticket, cost_nanos=10))
    monkeypatch.undo()
    raw = backend.connect(REDIS_URL, backend.ClientOptions(2, 2.0))
    forget_at_us = await raw.zscore(backend.settled_key(name), verdict.ticket.id)
    await backend.close(raw)
    await state.close()
    keep_s = (forget_at_us - time.time_ns() / 1000) / 1e6
    assert (86_000 < keep_s <= 86_400) if late else (590 < keep_s <= 600)
