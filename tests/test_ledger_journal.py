"""The settle journal: what a real redis-server that is stopped or frozen did not take is booked
once it is back, exactly once, also when the process that journalled it was killed."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.state import BudgetCheck, Settlement, SpendRecord, Ticket, spend_report
from gateway.state.base import merge_reports
from gateway.state.journal import SettleJournal, read_lines
from gateway.state.memory import MemoryState
from gateway.state.redis_backend import RedisState
from gateway.state.settings import BudgetPolicy
from tests.conftest import PrivateRedis, until
from tests.test_admission import make_ctx, ok_handler, stage

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
FAR = 4_000_000_000


def cost_of(headers: dict[str, str]) -> int:
    return round(float(headers["x-gateway-cost-usd"]) * 1e9)


def ledger_key(tenant: str) -> str:
    return "{" + tenant + "}:usd:day:" + datetime.now(UTC).strftime("%Y-%m-%d")


async def test_requests_served_while_redis_is_down_are_booked_when_it_returns(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    state = RedisState(private_redis.url, down_for_s=0.1)
    budget = BudgetPolicy(enabled=True, daily_usd=10, on_state_error="fail_open")
    admission = stage(budget=budget, state=state, journal_dir=tmp_path)
    served: list[int] = []
    ctx = make_ctx(tenant="acme", max_tokens=50)
    await admission.handle(ctx, ok_handler())  # Redis up: booked at once
    served.append(cost_of(ctx.response_headers))
    private_redis.stop()
    for _ in range(5):
        ctx = make_ctx(tenant="acme", max_tokens=50)
        response = await admission.handle(ctx, ok_handler())
        assert response.status == 200
        served.append(cost_of(ctx.response_headers))
        actions = [d.action for d in ctx.decisions if d.stage == "admission"]
        assert "fail_open" in actions and "settle_journalled" in actions
    journal = admission.journal
    assert len(journal.pending) == 5 and len(read_lines(journal.path)) == 5  # on disk, not only in memory
    assert await journal.replay() == 0  # still down: nothing taken, nothing dropped

    private_redis.start()  # an empty Redis: only what is booked from now on counts

    async def booked() -> bool:
        await journal.replay()
        return not journal.pending

    await until(booked, 10)
    assert read_lines(journal.path) == []
    assert await state.ledger(ledger_key("acme")) == sum(served[1:])
    report = await spend_report(state, "acme", days=1)
    assert report["requests"] == 5 and round(report["cost_usd"] * 1e9) == sum(served[1:])
    await journal.close()
    assert files_in(tmp_path) == []  # nothing left behind once everything is booked
    await state.close()


async def test_a_settle_that_timed_out_on_a_frozen_redis_is_counted_once(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    state = RedisState(private_redis.url, timeout_s=0.3, down_for_s=0.1)
    admission = stage(budget=BudgetPolicy(enabled=True, daily_usd=10), state=state, journal_dir=tmp_path)
    ctx = make_ctx(tenant="frozen", max_tokens=50)

    async def freeze_then_answer(inner_ctx: object) -> object:
        private_redis.freeze()  # after the admit, before the settle
        return await ok_handler()(inner_ctx)  # type: ignore[arg-type]

    try:
        await admission.handle(ctx, freeze_then_answer)  # type: ignore[arg-type]
        cost = cost_of(ctx.response_headers)
        assert any(d.action == "settle_journalled" for d in ctx.decisions)
    finally:
        private_redis.thaw()
    # Whether or not Redis ran the settle it was sent before the reply timed out, the journal sends
    # it again once Redis answers, and the settle id keeps it from being counted twice.
    journal = admission.journal

    async def booked() -> bool:
        await journal.replay()
        return not journal.pending

    await until(booked, 10)
    assert await state.ledger(ledger_key("frozen")) == cost
    report = await spend_report(state, "frozen", days=1)
    assert report["requests"] == 1
    await journal.close()
    await state.close()


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from gateway.state import BudgetCheck, Settlement, SpendRecord, Ticket
from gateway.state.journal import SettleJournal
from gateway.state.memory import MemoryState

journal = SettleJournal(MemoryState(), Path(sys.argv[1]))
for i in range(3):
    budget = BudgetCheck("{orphan}:usd:day", limit_nanos=10**12, amount_nanos=500, expires_at=4_000_000_000)
    record = SpendRecord("orphan", "2026-12-04", "m", "k", 4_000_000_000)
    journal.append(Settlement("orphan", Ticket.unreserved((budget,)), cost_nanos=100 + i, records=(record,)))
os.kill(os.getpid(), signal.SIGKILL)
"""


def files_in(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


def journal_of_a_killed_process(folder: Path) -> Path:
    died = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(folder)], check=False)
    assert died.returncode == -signal.SIGKILL
    left = list(folder.glob("settle-*.jsonl"))
    assert len(left) == 1 and len(read_lines(left[0])) == 3
    with left[0].open("ab") as torn:
        torn.write(b'{"tenant": "orphan", "tick')  # a line cut short by the kill
    return left[0]


async def test_a_killed_processs_journal_is_taken_over_and_booked(tmp_path: Path) -> None:
    orphan = journal_of_a_killed_process(tmp_path)

    state = MemoryState()
    successor = SettleJournal(state, tmp_path, retry_s=0.05)
    task = asyncio.create_task(successor.run())
    try:

        async def booked() -> bool:
            return await state.ledger("{orphan}:usd:day") == 100 + 101 + 102

        await until(booked, 10)
    finally:
        task.cancel()
    assert orphan not in files_in(tmp_path)  # taken over and removed
    assert successor.replayed == 3
    await successor.close()


async def test_a_live_processs_journal_is_left_alone(tmp_path: Path) -> None:
    owner = SettleJournal(MemoryState(), tmp_path)
    budget = BudgetCheck("{live}:usd", limit_nanos=10**9, amount_nanos=1, expires_at=FAR)
    owner.append(Settlement("live", Ticket.unreserved((budget,)), cost_nanos=7))
    other_state = MemoryState()
    other = SettleJournal(other_state, tmp_path)
    other._adopt_orphans()
    assert other.pending == [] and owner.path in files_in(tmp_path)
    assert await owner.replay() == 1
    assert await other_state.ledger("{live}:usd") == 0
    await owner.close()
    await other.close()
    assert files_in(tmp_path) == []


async def test_settlements_round_trip_through_the_journal_format(tmp_path: Path) -> None:
    budget = BudgetCheck("{t}:usd", 10, 5, FAR, 8, "key k", "month", 123)
    record = SpendRecord("t", "2026-12-04", "gpt-4o", "k", FAR)
    original = Settlement("t", Ticket("abc", 42, (), (budget,)), tokens=17, cost_nanos=3, records=(record,))
    journal = SettleJournal(MemoryState(), tmp_path)
    journal.append(original)
    assert read_lines(journal.path) == [original]
    await journal.close()


async def test_an_unwritable_journal_folder_keeps_settles_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    state = MemoryState()
    journal = SettleJournal(state, blocker / "journal")
    budget = BudgetCheck("{w}:usd", limit_nanos=10**9, amount_nanos=1, expires_at=FAR)
    journal.append(Settlement("w", Ticket.unreserved((budget,)), cost_nanos=9))  # no exception
    assert len(journal.pending) == 1
    assert await journal.replay() == 1
    assert await state.ledger("{w}:usd") == 9
    await journal.close()


class CountingSettles:
    """A backend whose settles are counted (the batching saves one per request)."""

    def __init__(self, inner: RedisState) -> None:
        self.inner = inner
        self.batches_reports = inner.batches_reports
        self.settles = 0

    async def settle(self, settlement: Settlement) -> bool:
        self.settles += 1
        return await self.inner.settle(settlement)

    async def admit(self, *args: object) -> object:
        return await self.inner.admit(*args)  # type: ignore[arg-type]


async def test_requests_without_a_budget_are_booked_in_batches(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    redis = RedisState(private_redis.url)
    counting = CountingSettles(redis)
    admission = stage(state=counting, journal_dir=tmp_path)  # type: ignore[arg-type]
    contexts = [make_ctx(tenant="batched", key_id=f"k{i % 2}") for i in range(60)]
    await asyncio.gather(*(admission.handle(ctx, ok_handler()) for ctx in contexts))
    served = sum(cost_of(ctx.response_headers) for ctx in contexts)

    async def booked() -> bool:
        report = await spend_report(redis, "batched", days=1)
        return report["requests"] == 60 and round(report["cost_usd"] * 1e9) == served

    await until(booked, 10)
    assert counting.settles <= 3  # one batch per tick, not 60 round trips
    report = await spend_report(redis, "batched", days=1)
    assert set(report["days"][0]["keys"]) == {"k0", "k1"}
    await admission.journal.close()
    assert files_in(tmp_path) == []
    await redis.close()


def test_report_lines_merge_per_tenant_day_model_and_key() -> None:
    def line(tenant: str, model: str, key: str, cost: int) -> Settlement:
        record = SpendRecord(tenant, "2026-12-04", model, key, FAR)
        return Settlement(tenant, Ticket.unreserved(), cost_nanos=cost, records=(record,))

    batches = merge_reports(
        [line("a", "m", "k", 5), line("a", "m", "k", 7), line("a", "n", "k", 1), line("b", "m", "j", 2)]
    )
    by_tenant = {b.tenant: b for b in batches}
    assert set(by_tenant) == {"a", "b"} and all(b.ticket.id.startswith("batch-") for b in batches)
    lines = {(r.model, r.key_id): (r.cost_nanos, r.requests) for r in by_tenant["a"].records}
    assert lines == {("m", "k"): (12, 2), ("n", "k"): (1, 1)}
    assert by_tenant["a"].reports_only() and not by_tenant["a"].ticket.budgets
