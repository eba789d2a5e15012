"""`state: redis://host:port/db`: state shared by any number of gateway processes and hosts.

Also a Redis Cluster or a Sentinel-managed primary, and Valkey (gateway.state.redis_connect).

Each admit, settle and lease renewal is one EVALSHA (redis-py's registered scripts fall back to EVAL on
NOSCRIPT, e.g. after a Redis restart), so a request costs two round trips in total. Keys carry
the tenant in a hash tag (`rg:{acme}:...`) so a tenant's keys share one Redis Cluster slot.

When Redis cannot be reached every call raises StateUnavailable quickly: short socket timeouts,
no client-side retry loop, and after a failure the backend does not try again for `down_for_s`
(so an outage costs each request microseconds, not a timeout). The connection pool reconnects
on its own once Redis is back.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

from redis.exceptions import NoScriptError

from gateway.state.base import (
    DEFAULT_LEASE_S,
    LATE_AFTER_S,
    LATE_SETTLED_KEEP_S,
    SETTLED_KEEP_S,
    BudgetCheck,
    BudgetState,
    RateCheck,
    RateState,
    Settlement,
    StateUnavailable,
    Ticket,
    Verdict,
    new_ticket_id,
)
from gateway.state.redis_connect import CLIENT_ERRORS, ClientOptions, close, connect, parse
from gateway.state.scripts import ADMIT, LEDGER, RENEW, SETTLE

log = logging.getLogger("rag_gateway.state")
PREFIX = "rg:"


class RedisState:
    name = "redis"
    batches_reports = True  # one round trip saved per request without a budget

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 128,
        timeout_s: float = 2.0,
        pool_timeout_s: float = 5.0,
        down_for_s: float = 0.5,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        self.url = url
        self._lease_us = int(lease_s * 1_000_000)
        # Waiting for a pooled connection is load, not an outage: hence its own, longer timeout.
        # No retry of a timeout: the script may have run. A settle is retried from the journal
        # (its id makes a second run a no-op); an admit that ran unseen lapses with its lease.
        self._client = connect(url, ClientOptions(max_connections, timeout_s, pool_timeout_s))
        self._where_text = parse(url).redacted()
        self._admit = self._client.register_script(ADMIT)
        self._settle = self._client.register_script(SETTLE)
        self._renew = self._client.register_script(RENEW)
        self._ledger = self._client.register_script(LEDGER)
        self._down_for_s = down_for_s
        self._down_until = 0.0
        self._down_since: float | None = None
        self.failures = 0  # calls that failed or were refused while down (for metrics and tests)

    # -- the protocol ---------------------------------------------------------------------------

    async def admit(self, rates: list[RateCheck], budgets: list[BudgetCheck]) -> Verdict:
        request_id = new_ticket_id()
        keys: list[str] = []
        args: list[Any] = [request_id, len(rates), len(budgets), self._lease_us]
        for check in rates:
            keys += [f"{PREFIX}{check.key}", f"{PREFIX}{check.key}:sum"]
            args += [check.limit, int(check.window_s * 1_000_000), check.cost]
        for budget in budgets:
            keys += [f"{PREFIX}{budget.key}", f"{PREFIX}{budget.key}:alerted", reservations_key(budget.key)]
            alert = -1 if budget.alert_nanos is None else budget.alert_nanos
            args += [budget.limit_nanos, budget.amount_nanos, budget.expires_at, alert]
        out = await self._run(self._admit, keys, args)
        allowed, now_us, denied_index = int(out[0]), int(out[1]), int(out[2])
        verdict = Verdict(allowed=bool(allowed), now_us=now_us)
        for i, check in enumerate(rates):
            used, reset_us, retry_us = (int(x) for x in out[3 + 3 * i : 6 + 3 * i])
            verdict.rates.append(RateState(check, used, reset_us / 1e6, retry_us / 1e6))
        base = 3 + 3 * len(rates)
        for j, budget in enumerate(budgets):
            spent, alert = int(out[base + 2 * j]), int(out[base + 2 * j + 1])
            verdict.budgets.append(BudgetState(budget, spent, bool(alert)))
        if denied_index:
            states: list[RateState | BudgetState] = [*verdict.rates, *verdict.budgets]
            verdict.denied = states[denied_index - 1]
        else:
            verdict.ticket = Ticket(request_id, now_us, tuple(rates), tuple(budgets))
        return verdict

    async def settle(self, settlement: Settlement) -> bool:
        if settlement.is_noop():
            return True
        ticket, tokens = settlement.ticket, settlement.tokens
        corrections = (
            [(c, tokens - c.cost) for c in ticket.rates if c.kind == "tokens" and tokens != c.cost]
            if tokens is not None
            else []
        )
        keys: list[str] = [settled_key(settlement.tenant)]
        args: list[Any] = [
            ticket.id, ticket.at_us, len(corrections), len(ticket.budgets), len(settlement.records),
            settlement.cost_nanos, time.time_ns() // 1000, SETTLED_KEEP_S * 1_000_000,
            int(LATE_AFTER_S * 1_000_000), LATE_SETTLED_KEEP_S * 1_000_000,
        ]  # fmt: skip
        for check, delta in corrections:
            keys += [f"{PREFIX}{check.key}", f"{PREFIX}{check.key}:sum"]
            args += [int(check.window_s * 1_000_000), delta]
        for budget in ticket.budgets:
            keys += [f"{PREFIX}{budget.key}", reservations_key(budget.key)]
            args.append(budget.amount_nanos)
        for record in settlement.records:
            keys.append(report_key(record.tenant, record.day))
            args += [
                record.expires_at,
                record.model,
                record.key_id,
                settlement.line_cost(record),
                record.requests,
            ]
        return bool(await self._run(self._settle, keys, args))

    async def renew(self, tickets: list[Ticket]) -> None:
        # One call per tenant: a script's keys must share a cluster slot (the tenant's hash tag).
        by_tenant: dict[str, tuple[list[str], list[Any]]] = defaultdict(lambda: ([], [self._lease_us]))
        for ticket in tickets:
            for budget in ticket.budgets:
                keys, args = by_tenant[budget.key.partition("}")[0]]
                keys.append(reservations_key(budget.key))
                args.append(f"{ticket.id}:{budget.amount_nanos}")
        for keys, args in by_tenant.values():
            await self._run(self._renew, keys, args)

    async def spend_days(self, tenant: str, days: list[str]) -> dict[str, dict[str, int]]:
        async def read() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                for day in days:
                    pipe.hgetall(report_key(tenant, day))
                return await pipe.execute()

        results = await self._guard(read)
        return {
            day: {k.decode(): int(v) for k, v in fields.items()}
            for day, fields in zip(days, results, strict=True)
        }

    async def ledger(self, key: str) -> int:
        return int(await self._run(self._ledger, [f"{PREFIX}{key}", reservations_key(key)], []))

    async def put_record(self, key: str, value: bytes, ttl_s: int) -> None:
        async def put() -> Any:
            return await self._client.set(f"{PREFIX}rec:{key}", value, ex=ttl_s)

        await self._guard(put)

    async def get_record(self, key: str) -> bytes | None:
        async def get() -> Any:
            return await self._client.get(f"{PREFIX}rec:{key}")

        return await self._guard(get)

    async def delete_record(self, key: str) -> bool:
        async def delete() -> Any:
            return await self._client.delete(f"{PREFIX}rec:{key}")

        return bool(await self._guard(delete))

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except CLIENT_ERRORS:
            return False

    async def close(self) -> None:
        await close(self._client)

    # -- failure handling -----------------------------------------------------------------------

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        async def call() -> Any:
            try:
                return await script(keys=keys, args=args)
            except NoScriptError:
                # The script cache was flushed between redis-py's EVALSHA and its reload: once more.
                return await script(keys=keys, args=args)

        return await self._guard(call)

    async def _guard(self, call: Any) -> Any:
        now = time.monotonic()
        if now < self._down_until:
            self.failures += 1
            raise StateUnavailable(f"redis at {self._where()} is unreachable (retrying shortly)")
        try:
            result = await call()
        except CLIENT_ERRORS as exc:
            self.failures += 1
            self._down_until = time.monotonic() + self._down_for_s
            if self._down_since is None:
                self._down_since = now
                log.warning(
                    "state: redis at %s is unreachable: %s: %s", self._where(), type(exc).__name__, exc
                )
            raise StateUnavailable(f"redis at {self._where()} is unreachable: {exc}") from exc
        if self._down_since is not None:
            log.warning(
                "state: redis at %s is reachable again after %.1fs", self._where(), now - self._down_since
            )
            self._down_since = None
        return result

    def _where(self) -> str:
        return self._where_text  # never the password that may be part of the URL


def report_key(tenant: str, day: str) -> str:
    return f"{PREFIX}{{{tenant}}}:spend:{day}"


def settled_key(tenant: str) -> str:
    return f"{PREFIX}{{{tenant}}}:settled"


def reservations_key(ledger: str) -> str:
    return f"{PREFIX}{ledger}:res"
