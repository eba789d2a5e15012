"""`state: redis://host:port/db`: state shared by any number of gateway processes and hosts.

Each admit and each settle is one EVALSHA (redis-py's registered scripts fall back to EVAL on
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
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from gateway.state.base import (
    BudgetCheck,
    BudgetState,
    RateCheck,
    RateState,
    SpendRecord,
    StateUnavailable,
    Ticket,
    Verdict,
)
from gateway.state.scripts import ADMIT, SETTLE

log = logging.getLogger("rag_gateway.state")
PREFIX = "rg:"


class RedisState:
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 128,
        timeout_s: float = 2.0,
        pool_timeout_s: float = 5.0,
        down_for_s: float = 0.5,
    ) -> None:
        self.url = url
        # A blocking pool caps the connections Redis sees from this process: under a burst,
        # requests queue for a connection instead of opening thousands. Waiting for one is load,
        # not an outage, hence its own, longer timeout than the socket's.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # One immediate retry heals a connection Redis closed. Never retry a timeout: the script
            # may have run, and running an admit or a settle twice would count spend twice.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            health_check_interval=30,
        )
        self._client = aioredis.Redis(connection_pool=pool)
        self._admit = self._client.register_script(ADMIT)
        self._settle = self._client.register_script(SETTLE)
        self._down_for_s = down_for_s
        self._down_until = 0.0
        self._down_since: float | None = None
        self.failures = 0  # calls that failed or were refused while down (for metrics and tests)

    # -- the protocol ---------------------------------------------------------------------------

    async def admit(self, rates: list[RateCheck], budgets: list[BudgetCheck]) -> Verdict:
        request_id = uuid.uuid4().hex[:16]
        keys: list[str] = []
        args: list[Any] = [request_id, len(rates), len(budgets)]
        for check in rates:
            keys += [f"{PREFIX}{check.key}", f"{PREFIX}{check.key}:sum"]
            args += [check.limit, int(check.window_s * 1_000_000), check.cost]
        for budget in budgets:
            keys += [f"{PREFIX}{budget.key}", f"{PREFIX}{budget.key}:alerted"]
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

    async def settle(
        self,
        ticket: Ticket,
        tokens: int | None,
        cost_nanos: int | None,
        record: SpendRecord | None = None,
    ) -> None:
        corrections = (
            [(c, tokens - c.cost) for c in ticket.rates if c.kind == "tokens" and tokens != c.cost]
            if tokens is not None
            else []
        )
        ledgers = (
            [(b, cost_nanos - b.amount_nanos) for b in ticket.budgets if cost_nanos != b.amount_nanos]
            if cost_nanos is not None
            else []
        )
        report = record is not None and cost_nanos is not None
        if not corrections and not ledgers and not report:
            return
        keys: list[str] = []
        args: list[Any] = [ticket.id, ticket.at_us, len(corrections), len(ledgers), "1" if report else "0"]
        for check, delta in corrections:
            keys += [f"{PREFIX}{check.key}", f"{PREFIX}{check.key}:sum"]
            args += [int(check.window_s * 1_000_000), delta]
        for budget, delta in ledgers:
            keys.append(f"{PREFIX}{budget.key}")
            args.append(delta)
        if report:
            assert record is not None
            keys.append(report_key(record.tenant, record.day))
            args += [record.expires_at, record.model, record.key_id, cost_nanos]
        await self._run(self._settle, keys, args)

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
        async def read() -> Any:
            return await self._client.get(f"{PREFIX}{key}")

        value = await self._guard(read)
        return int(value or 0)

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
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._client.aclose()
        await self._client.connection_pool.disconnect()

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
        except (RedisError, OSError, TimeoutError) as exc:
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
        # Never log a password that may be part of the URL.
        kwargs = self._client.connection_pool.connection_kwargs
        return f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}/{kwargs.get('db', 0)}"


def report_key(tenant: str, day: str) -> str:
    return f"{PREFIX}{{{tenant}}}:spend:{day}"
