"""The budget ledger under faults, as a user runs it: two gateway replicas share a real Redis that is
stopped, restarted and frozen (SIGSTOP), and replicas are killed with SIGKILL while requests run.

After recovery the settled spend equals the sum of `x-gateway-cost-usd` of every answer a client
got, to the nano-dollar, and the ledger holds no reservation past its lease: nothing a dead replica
reserved blocks the budget, and nothing served while Redis was away goes unbooked.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from gateway.state.redis_backend import RedisState
from tests.conftest import (
    ACME_KEY,
    UPSTREAM_SECRET,
    MockServer,
    PrivateRedis,
    spawn_gateway,
    update_yaml,
    wait_until_answering,
    write_gateway_files,
)

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
ADMIN = "sk-admin-faults"
LEASE_S = 2.0
CHAT = "/v1/chat/completions"


def nanos(usd: str) -> int:
    return int(Decimal(usd) * 1_000_000_000)


class Replicas:
    """Gateway processes sharing one config, one Redis and one journal folder."""

    def __init__(self, config_path: Path, cwd: Path) -> None:
        self.config_path, self.cwd = config_path, cwd
        self.procs: list[subprocess.Popen] = []

    def start(self) -> str:
        env = {"MOCK_UPSTREAM_KEY": UPSTREAM_SECRET, "TEST_ADMIN_KEY": ADMIN}
        proc, url = spawn_gateway(self.config_path, self.cwd, env)
        self.procs.append(proc)
        wait_until_answering(proc, f"{url}/healthz")
        return url

    def kill(self, index: int) -> None:
        self.procs[index].send_signal(signal.SIGKILL)
        self.procs[index].wait(10)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(20)


@pytest.fixture
def replicas(tmp_path: Path, upstream: MockServer, private_redis_kept: PrivateRedis) -> Iterator[Replicas]:
    config_path = write_gateway_files(tmp_path, upstream.base)
    update_yaml(
        config_path,
        state=private_redis_kept.url,
        ledger={"lease_s": LEASE_S, "journal_dir": str(tmp_path / "journal")},
        pricing={"gpt-mock": {"input_per_1k": 1.0, "output_per_1k": 2.0, "max_output_tokens": 1000}},
    )
    update_yaml(
        tmp_path / "policies" / "acme.yaml",
        budget={"enabled": True, "daily_usd": 1000, "on_state_error": "fail_open"},
    )
    group = Replicas(config_path, tmp_path)
    yield group
    group.close()


@pytest.fixture
def private_redis_kept(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(data_dir=tmp_path / "redis")
    server.start()
    yield server
    server.stop()


class Traffic:
    """Clients on threads; every answer's cost header is kept."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=16)
        self.served: list[int] = []
        self.failed = 0

    def one(self, url: str) -> None:
        try:
            response = httpx.post(
                f"{url}{CHAT}",
                headers={"Authorization": f"Bearer {ACME_KEY}"},
                json={"model": "gpt-mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50},
                timeout=30,
            )
        except httpx.HTTPError:
            self.failed += 1  # the replica died under it: no answer, nothing served
            return
        assert response.status_code == 200, response.text
        self.served.append(nanos(response.headers["x-gateway-cost-usd"]))

    def run(self, url: str, count: int) -> None:
        list(self.pool.map(lambda _: self.one(url), range(count)))

    def start(self, url: str, count: int) -> list:
        return [self.pool.submit(self.one, url) for _ in range(count)]


def ledger_now(redis_url: str) -> int:
    async def read() -> int:
        state = RedisState(redis_url)
        try:
            day = datetime.now(UTC).strftime("%Y-%m-%d")
            return await state.ledger("{acme}:usd:day:" + day)
        finally:
            await state.close()

    return asyncio.run(read())


def settled(url: str) -> tuple[int, int] | None:
    """Settled spend and requests today; None while the replica cannot reach Redis yet (503)."""
    report = httpx.get(f"{url}/admin/tenants/acme/spend?days=1", headers={"Authorization": f"Bearer {ADMIN}"})
    if report.status_code == 503:
        return None
    assert report.status_code == 200, report.text
    body = report.json()
    return round(body["cost_usd"] * 1e9), body["requests"]


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_spend_is_exact_after_replica_kills_and_redis_outages(
    replicas: Replicas, upstream: MockServer, private_redis_kept: PrivateRedis
) -> None:
    redis = private_redis_kept
    first, second = replicas.start(), replicas.start()
    traffic = Traffic()
    traffic.run(first, 10)
    traffic.run(second, 10)

    # 1. A replica killed with requests in flight: their reservations stay until their lease runs out.
    upstream.script("mock-1", *["slow:1200"] * 8)
    in_flight = traffic.start(first, 8)
    wait_for(lambda: len(upstream.requests()) >= 28, 10, "the slow requests did not reach the upstream")
    replicas.kill(0)
    for future in in_flight:
        future.result()
    assert traffic.failed == 8
    killed_at = time.monotonic()
    assert ledger_now(redis.url) > sum(traffic.served)  # the dead replica's reservations, for now

    # 2. Redis stopped: the other replica serves (fail_open) and journals; then it is killed too.
    redis.stop()
    traffic.run(second, 12)
    replicas.kill(1)

    # 3. Redis back (with its data); a new replica takes over the dead one's journal and books it.
    redis.start()
    third = replicas.start()

    # 4. Redis frozen: admits time out and are served (fail_open), settles wait in the journal.
    redis.freeze()
    try:
        traffic.run(third, 3)
    finally:
        redis.thaw()

    served = sum(traffic.served)
    assert len(traffic.served) == 10 + 10 + 12 + 3
    wait_for(lambda: settled(third) == (served, len(traffic.served)), 30, "the settled spend never matched")
    # Every reservation is gone: the ledger is exactly the settled spend.
    wait_for(lambda: ledger_now(redis.url) == served, 10, "a reservation outlived its lease")
    assert time.monotonic() - killed_at < 60
    assert not any((replicas.cwd / "journal").glob("settle-*.jsonl")) or all(
        path.stat().st_size == 0 for path in (replicas.cwd / "journal").glob("settle-*.jsonl")
    )
