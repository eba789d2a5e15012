"""The ledger over a long run: 100k requests through a gateway with a budget on Redis, which is
restarted twice while they run (issue 15: RSS stays flat; the spend stays exact).

Starts a redis-server with an append-only file on a free port, the mock upstream, and one gateway
process (a tenant with a daily budget, on_state_error: fail_open), then sends --requests requests
from --concurrency clients. At one third and two thirds Redis is stopped for --outage-s seconds and
started again on the same data. Prints the gateway's RSS every 10% of the run, the requests served
while Redis was away, and, once the journal has drained, settled spend against the sum of the
`x-gateway-cost-usd` headers the clients received.

    .venv/bin/python bench/ledger_soak.py [--requests 100000] [--concurrency 16] [--outage-s 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Server, free_port, rss_mb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gateway.policy import hash_key

ROOT = Path(__file__).resolve().parents[1]

KEY = "sk-soak-tenant"
ADMIN = "sk-soak-admin"


def write_config(work: Path, upstream: str, redis_url: str) -> Path:
    (work / "policies").mkdir()
    deployment = {"provider": "openai_compatible", "model": "gpt-4o-mini", "api_base": f"{upstream}/v1"}
    config = {
        "server": {"admin_key_env": "SOAK_ADMIN_KEY"},
        "policies_dir": str(work / "policies"),
        "state": redis_url,
        "ledger": {"journal_dir": str(work / "journal")},
        "retrieval": {"enabled": False},
        "telemetry": {"request_log": {"enabled": False}, "traces": False},
        "models": [{"name": "gpt-4o-mini", "deployments": [deployment]}],
    }
    (work / "gateway.yaml").write_text(yaml.safe_dump(config))
    policy = {
        "tenant": "soak",
        "api_keys": [hash_key(KEY)],
        "models": ["gpt-4o-mini"],
        "budget": {"enabled": True, "daily_usd": 1_000_000, "on_state_error": "fail_open"},
    }
    (work / "policies" / "soak.yaml").write_text(yaml.safe_dump(policy))
    return work / "gateway.yaml"


class Redis:
    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.dir = work / "redis"
        self.dir.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(10)


async def drive(base: str, total: int, concurrency: int, on_progress) -> tuple[list[int], int]:  # type: ignore[no-untyped-def]
    costs: list[int] = []
    failed = 0
    sent = 0
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal sent, failed
            while sent < total:
                sent += 1
                await on_progress(sent)
                response = await client.post(
                    "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
                )
                if response.status_code == 200:
                    costs.append(int(Decimal(response.headers["x-gateway-cost-usd"]) * 1_000_000_000))
                else:
                    failed += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return costs, failed


def settled_nanos(base: str) -> tuple[int, int] | None:
    response = httpx.get(
        f"{base}/admin/tenants/soak/spend?days=1", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    if response.status_code != 200:
        return None
    body = response.json()
    return round(body["cost_usd"] * 1e9), body["requests"]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--outage-s", type=float, default=3.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rg-soak-"))
    redis = Redis(work)
    redis.start()
    upstream_port, gateway_port = free_port(), free_port()
    upstream = Server(
        "upstream", [sys.executable, str(ROOT / "tests" / "mock_upstream.py"), "--port", str(upstream_port)],
        upstream_port, work, core=None,
    )  # fmt: skip
    upstream.start()
    upstream.wait_ready(30)
    config = write_config(work, upstream.base, f"redis://127.0.0.1:{redis.port}/0")
    gateway = Server(
        "gateway",
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(gateway_port)],
        gateway_port, work, core=None, ready_path="/readyz", cwd=ROOT,
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "SOAK_ADMIN_KEY": ADMIN, "OTEL_SDK_DISABLED": "true"},
    )  # fmt: skip
    gateway.start()
    gateway.wait_ready(120)
    outages = {args.requests // 3, 2 * args.requests // 3}
    step = max(1, args.requests // 10)
    rss_samples: list[tuple[int, float]] = [(0, rss_mb(gateway.pid))]
    print(f"gateway pid {gateway.pid}, RSS at start {rss_samples[0][1]:.1f} MB", flush=True)

    async def on_progress(sent: int) -> None:
        if sent in outages:
            redis.stop()
            print(f"  {sent}: Redis stopped for {args.outage_s:.0f} s", flush=True)
            await asyncio.sleep(0)  # the other clients go on; this one waits out the outage
            await asyncio.to_thread(time.sleep, args.outage_s)
            redis.start()
            print(f"  {sent}: Redis back", flush=True)
        if sent % step == 0:
            rss_samples.append((sent, rss_mb(gateway.pid)))
            print(f"  {sent:>7} requests  RSS {rss_samples[-1][1]:.1f} MB", flush=True)

    started = time.perf_counter()
    costs, failed = await drive(gateway.base, args.requests, args.concurrency, on_progress)
    elapsed = time.perf_counter() - started
    served = sum(costs)
    deadline = time.monotonic() + 60
    while settled_nanos(gateway.base) != (served, len(costs)):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    booked = settled_nanos(gateway.base)
    print(f"{len(costs)} answered, {failed} failed, in {elapsed:.0f} s ({len(costs) / elapsed:.0f} RPS)")
    print(f"served cost (sum of x-gateway-cost-usd): {served} nanos; settled: {booked}")
    after = [mb for n, mb in rss_samples if n >= step]
    print(f"RSS: start {rss_samples[0][1]:.1f} MB, at 10% {after[0]:.1f} MB, end {after[-1]:.1f} MB, "
          f"growth after warm-up {after[-1] - after[0]:+.1f} MB")  # fmt: skip
    gateway.stop()
    upstream.stop()
    redis.stop()
    exact = booked == (served, len(costs))
    print("spend exact" if exact else "SPEND MISMATCH")
    return 0 if exact and failed == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    sys.exit(asyncio.run(main()))
