"""`state: memory`: the embedded backend for one gateway process.

Every method runs to completion without awaiting, so on one event loop it is as atomic as the
Redis scripts. Nothing is shared between processes: run several workers or replicas on Redis.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.state.base import (
    DEFAULT_LEASE_S,
    SETTLED_KEEP_S,
    BudgetCheck,
    BudgetState,
    RateCheck,
    RateState,
    Settlement,
    Ticket,
    Verdict,
    new_ticket_id,
)

# One process never retries a settle against itself (this store cannot fail), so its settle ids
# only keep the contract; a bound keeps a busy process from holding ten minutes of them.
MAX_SETTLED_IDS = 10_000


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass(slots=True)
class _Window:
    entries: deque[tuple[int, int]] = field(default_factory=deque)  # (time_us, cost), oldest first
    total: int = 0

    def expire(self, now_us: int, window_us: int) -> None:
        horizon = now_us - window_us
        entries = self.entries
        while entries and entries[0][0] <= horizon:
            self.total -= entries.popleft()[1]

    def time_until_free(self, need: int, now_us: int, window_us: int) -> int:
        """Microseconds until `need` units have left the window."""
        freed = 0
        for at, cost in self.entries:
            freed += cost
            if freed >= need:
                return at + window_us - now_us
        return window_us

    def reset_us(self, now_us: int, window_us: int) -> int:
        return self.entries[-1][0] + window_us - now_us if self.entries else 0


class MemoryState:
    name = "memory"
    batches_reports = False  # a settle here is a few dict updates

    def __init__(self, clock_us: Callable[[], int] = _now_us, lease_s: float = DEFAULT_LEASE_S) -> None:
        self._clock = clock_us
        self._lease_us = int(lease_s * 1_000_000)
        self._windows: dict[str, _Window] = {}
        self._ledgers: dict[str, int] = {}
        # Per ledger, its open reservations: ticket id -> (amount, lease end in µs).
        self._reservations: dict[str, dict[str, tuple[int, int]]] = {}
        # Per tenant, the settle ids applied and when they may be forgotten (oldest first), so that
        # a repeated settle is a no-op. A settle here never runs late: SETTLED_KEEP_S applies.
        self._settled: dict[str, dict[str, int]] = {}
        self._ledger_expiry: dict[str, int] = {}
        self._alerted: set[str] = set()
        self._reports: dict[str, dict[str, int]] = {}
        self._records: dict[str, tuple[bytes, int]] = {}  # key -> (value, expires at, µs)

    async def admit(self, rates: list[RateCheck], budgets: list[BudgetCheck]) -> Verdict:
        now = self._clock()
        self._drop_expired_ledgers(now // 1_000_000)
        verdict = Verdict(allowed=True, now_us=now)
        for check in rates:
            window_us = int(check.window_s * 1_000_000)
            win = self._windows.setdefault(check.key, _Window())
            win.expire(now, window_us)
            state = RateState(check, win.total, win.reset_us(now, window_us) / 1e6)
            if win.total + check.cost > check.limit:
                need = win.total + check.cost - check.limit
                state.retry_after_s = win.time_until_free(need, now, window_us) / 1e6
                if verdict.denied is None:
                    verdict.allowed = False
                    verdict.denied = state
            verdict.rates.append(state)
        for budget in budgets:
            spent = self._sweep(budget.key, now)
            state = BudgetState(budget, spent)
            if spent + budget.amount_nanos > budget.limit_nanos and verdict.denied is None:
                verdict.allowed = False
                verdict.denied = state
            verdict.budgets.append(state)
        if not verdict.allowed:
            return verdict
        ticket = Ticket(new_ticket_id(), now, tuple(rates), tuple(budgets))
        for state in verdict.rates:
            check = state.check
            win = self._windows[check.key]
            win.entries.append((now, check.cost))
            win.total += check.cost
            state.used = win.total
            state.reset_s = check.window_s
        for state in verdict.budgets:
            budget = state.check
            spent = self._ledgers.get(budget.key, 0) + budget.amount_nanos
            self._ledgers[budget.key] = spent
            self._ledger_expiry[budget.key] = budget.expires_at
            self._reservations.setdefault(budget.key, {})[ticket.id] = (
                budget.amount_nanos,
                now + self._lease_us,
            )
            state.spent_nanos = spent
            if (
                budget.alert_nanos is not None
                and spent >= budget.alert_nanos
                and budget.key not in self._alerted
            ):
                self._alerted.add(budget.key)
                state.alert = True
        verdict.ticket = ticket
        return verdict

    async def settle(self, settlement: Settlement) -> bool:
        now = self._clock()
        if not self._first_settle(settlement.tenant, settlement.ticket.id, now):
            return False
        ticket, tokens = settlement.ticket, settlement.tokens
        if tokens is not None:
            for check in ticket.rates:
                delta = tokens - check.cost
                window_us = int(check.window_s * 1_000_000)
                if check.kind != "tokens" or delta == 0 or ticket.at_us <= now - window_us:
                    continue  # nothing to correct, or the request has already left the window
                win = self._windows.setdefault(check.key, _Window())
                # Filed at the admission time so the correction leaves the window with the original.
                _insert_sorted(win.entries, (ticket.at_us, delta))
                win.total += delta
        for budget in ticket.budgets:
            held = self._reservations.get(budget.key, {}).pop(ticket.id, None)
            # Still reserved: replace the reservation. Released (lease ran out) or never reserved:
            # the whole cost is new spend.
            delta = settlement.cost_nanos - (held[0] if held is not None else 0)
            if delta:
                self._ledgers[budget.key] = self._ledgers.get(budget.key, 0) + delta
                self._ledger_expiry.setdefault(budget.key, budget.expires_at)
        for record in settlement.records:
            report = self._reports.setdefault(f"{record.tenant}:{record.day}", {})
            cost = settlement.line_cost(record)
            for name, amount in (
                (f"m:{record.model}", cost),
                (f"r:{record.model}", record.requests),
                (f"k:{record.key_id}", cost),
            ):
                report[name] = report.get(name, 0) + amount
        return True

    async def renew(self, tickets: list[Ticket]) -> None:
        until = self._clock() + self._lease_us
        for ticket in tickets:
            for budget in ticket.budgets:
                held = self._reservations.get(budget.key, {})
                if ticket.id in held:
                    held[ticket.id] = (held[ticket.id][0], until)

    async def spend_days(self, tenant: str, days: list[str]) -> dict[str, dict[str, int]]:
        return {day: dict(self._reports.get(f"{tenant}:{day}", {})) for day in days}

    async def ledger(self, key: str) -> int:
        return self._sweep(key, self._clock())

    async def put_record(self, key: str, value: bytes, ttl_s: int) -> None:
        now = self._clock()
        if len(self._records) > 4096:  # expired records are dropped as new ones arrive
            self._records = {k: v for k, v in self._records.items() if v[1] > now}
        self._records[key] = (value, now + ttl_s * 1_000_000)

    async def get_record(self, key: str) -> bytes | None:
        record = self._records.get(key)
        if record is None or record[1] <= self._clock():
            self._records.pop(key, None)
            return None
        return record[0]

    async def delete_record(self, key: str) -> bool:
        return await self.get_record(key) is not None and self._records.pop(key, None) is not None

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    def _sweep(self, key: str, now_us: int) -> int:
        """Release the reservations of `key` whose lease has run out; the ledger's value after."""
        held = self._reservations.get(key)
        spent = self._ledgers.get(key, 0)
        if held:
            lapsed = [rid for rid, (_, until) in held.items() if until <= now_us]
            for rid in lapsed:
                spent -= held.pop(rid)[0]
            if lapsed:
                self._ledgers[key] = spent
        return spent

    def _first_settle(self, tenant: str, settle_id: str, now_us: int) -> bool:
        done = self._settled.setdefault(tenant, {})
        if settle_id in done:
            return False
        while done:
            oldest = next(iter(done))
            if done[oldest] > now_us:
                break
            del done[oldest]
        if len(done) >= MAX_SETTLED_IDS:
            del done[next(iter(done))]
        done[settle_id] = now_us + SETTLED_KEEP_S * 1_000_000
        return True

    def _drop_expired_ledgers(self, now_s: int) -> None:
        # Ledgers are named by period; without this a long-lived process keeps every past day.
        if len(self._ledger_expiry) < 1024:
            return
        for key in [k for k, at in self._ledger_expiry.items() if at <= now_s]:
            self._ledger_expiry.pop(key, None)
            self._ledgers.pop(key, None)
            self._reservations.pop(key, None)
            self._alerted.discard(key)


def _insert_sorted(entries: deque[tuple[int, int]], item: tuple[int, int]) -> None:
    """Insert keeping time order; corrections belong near the end, so scan from there."""
    index = len(entries)
    while index > 0 and entries[index - 1][0] > item[0]:
        index -= 1
    entries.insert(index, item)
