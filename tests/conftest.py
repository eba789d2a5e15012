"""Shared fixtures: a scripted mock upstream and a real gateway server, both on loopback."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from aiohttp import web

from gateway.app import create_app
from gateway.config import load_config
from gateway.policy import hash_key
from tests.mock_upstream import MockUpstream

UPSTREAM_SECRET = "sk-upstream-secret-DO-NOT-LEAK-1234567890"
ACME_KEY = "sk-acme-test-key-0001"
OTHER_KEY = "sk-other-test-key-0002"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_gateway(
    config_path: Path, cwd: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """`rag-gateway serve` as a user runs it, in its own process on a free port, output discarded."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config_path), "--port", str(port)],
        cwd=cwd,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return server, f"http://127.0.0.1:{port}"


def serve_expecting_exit(config_path: Path, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """`rag-gateway serve` for a config that must not start: its exit, with stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config_path), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )


async def until(probe: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    """Poll an async condition until it holds, failing the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not await probe():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.02)


def wait_until_answering(server: subprocess.Popen, url: str, timeout_s: float = 60) -> None:
    """Poll `url` until it answers 200; fail if the process exits or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline and server.poll() is None, "the gateway did not start"
        time.sleep(0.1)


class PrivateRedis:
    """A redis-server of a test's own, on a free port, that the test may stop, freeze and restart.

    With `data_dir` it keeps its data across restarts (append-only file, fsync'd on every write),
    as a production Redis holding budgets must."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        if self.data_dir is None:
            args += ["--appendonly", "no"]
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            args += ["--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "always"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


class RedisCluster:
    """A real Redis Cluster of three masters (no replicas) on free ports, each in its own folder."""

    def __init__(self, root: Path, masters: int = 3) -> None:
        self.ports = [self._free_cluster_port() for _ in range(masters)]
        self.procs: list[subprocess.Popen[bytes]] = []
        for port in self.ports:
            folder = root / str(port)
            folder.mkdir(parents=True)
            self.procs.append(
                subprocess.Popen(
                    ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                     "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--save", "", "--appendonly", "no"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        for port in self.ports:
            _wait_for_port(port)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while not all(self._ok(port) for port in self.ports):
            assert time.monotonic() < deadline, "the Redis Cluster did not reach cluster_state:ok"
            time.sleep(0.1)

    @staticmethod
    def _free_cluster_port() -> int:
        """A free port whose cluster bus port (port + 10000) is free and valid too."""
        while True:
            port = random.randint(20000, 50000)
            try:
                for candidate in (port, port + 10000):
                    with socket.socket() as s:
                        s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return port

    @staticmethod
    def _ok(port: int) -> bool:
        info = subprocess.run(
            ["redis-cli", "-p", str(port), "cluster", "info"], capture_output=True, text=True, timeout=10
        )
        return "cluster_state:ok" in info.stdout

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:2])

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(10)


class RedisSentinel:
    """A primary redis-server watched by one Sentinel (`redis-server --sentinel`) naming it `mymaster`."""

    def __init__(self, root: Path) -> None:
        self.primary = PrivateRedis()
        self.primary.start()
        self.port = free_port()
        config = root / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\n"
            f"sentinel monitor mymaster 127.0.0.1 {self.primary.port} 1\n"
            "sentinel down-after-milliseconds mymaster 5000\n"
        )
        self.proc = subprocess.Popen(
            ["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_for_port(self.port)

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/mymaster/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.primary.stop()


def _wait_for_port(port: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on port {port}"
            time.sleep(0.02)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are needed for a local Redis Cluster")
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is needed for a local Sentinel")
    sentinel = RedisSentinel(tmp_path_factory.mktemp("redis-sentinel"))
    yield sentinel
    sentinel.stop()


class MockServer:
    """The mock upstream running on its own loop in a thread."""

    def __init__(self) -> None:
        self.mock = MockUpstream()
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(self.mock.app(), access_log=None)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self.loop.run_forever()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, model: str, *steps: str) -> None:
        httpx.post(f"{self.base}/_control", json={"model": model, "script": list(steps)})

    def requests(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.base}/_requests").json()["requests"]

    def cancelled(self) -> int:
        return httpx.get(f"{self.base}/_requests").json()["cancelled"]

    def reset(self) -> None:
        httpx.post(f"{self.base}/_reset")


class ServerThread:
    """A real uvicorn server for a gateway app, in a thread, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            loop="asyncio",
            http="httptools",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def upstream() -> Iterator[MockServer]:
    server = MockServer()
    yield server
    server.loop.call_soon_threadsafe(server.loop.stop)


@pytest.fixture(autouse=True)
def _reset_upstream(request: pytest.FixtureRequest) -> None:
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").reset()


def write_gateway_files(
    root: Path, upstream_base: str, extra_models: list[dict] | None = None, retrieval: dict | None = None
) -> Path:
    """gateway.yaml with mock-backed models, plus _default, acme and other policies."""
    v1 = f"{upstream_base}/v1"
    models = [
        {
            "name": "gpt-mock",
            "deployments": [
                {
                    "provider": "openai_compatible",
                    "model": "mock-1",
                    "api_base": v1,
                    "api_key_env": "MOCK_UPSTREAM_KEY",
                    "timeout_s": 1.5,
                    "max_retries": 2,
                }
            ],
        },
        {
            "name": "balanced",
            "deployments": [
                {
                    "provider": "openai_compatible",
                    "model": "dep-a",
                    "api_base": v1,
                    "weight": 3,
                    "max_retries": 0,
                },
                {
                    "provider": "openai_compatible",
                    "model": "dep-b",
                    "api_base": v1,
                    "weight": 1,
                    "max_retries": 0,
                },
            ],
        },
        {
            "name": "primary",
            "fallbacks": ["backup"],
            "deployments": [
                {"provider": "openai_compatible", "model": "primary-1", "api_base": v1, "max_retries": 1}
            ],
        },
        {
            "name": "backup",
            "deployments": [{"provider": "openai_compatible", "model": "backup-1", "api_base": v1}],
        },
        {
            "name": "azure-mock",
            "deployments": [
                {
                    "provider": "azure",
                    "model": "my-deploy",
                    "api_base": upstream_base,
                    "api_version": "2024-06-01",
                    "api_key_env": "MOCK_UPSTREAM_KEY",
                }
            ],
        },
        {
            "name": "other-only",
            "deployments": [{"provider": "openai_compatible", "model": "o", "api_base": v1}],
        },
        {
            "name": "embed-mock",
            "mode": "embedding",
            "deployments": [{"provider": "openai_compatible", "model": "e", "api_base": v1}],
        },
        {"name": "local-extractive", "deployments": [{"provider": "local", "model": "extractive"}]},
        {
            "name": "via-litellm",
            "deployments": [
                {
                    "provider": "hosted_vllm",
                    "model": "lit-1",
                    "api_base": v1,
                    "api_key_env": "MOCK_UPSTREAM_KEY",
                }
            ],
        },
        *(extra_models or []),
    ]
    config = {
        "server": {"max_body_bytes": 200_000, "admin_key_env": "TEST_ADMIN_KEY"},
        "models": models,
        "policies_dir": "policies",
        # Most tests exercise the proxy; those about retrieval turn it on (the embedder takes time to load).
        "retrieval": retrieval or {"enabled": False},
        # The request log writes from a thread after a test's output capture ended: keep it off
        # here; test_observability turns it on (into a file) where it is the subject.
        "telemetry": {"request_log": {"enabled": False}},
        "router": {
            "backoff_base_s": 0.01,
            "backoff_max_s": 0.05,
            "circuit_breaker_failures": 3,
            "circuit_breaker_cooldown_s": 60,
        },
    }
    policies = root / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    (root / "gateway.yaml").write_text(yaml.safe_dump(config))
    (policies / "_default.yaml").write_text(yaml.safe_dump({"models": ["local-extractive"]}))
    (policies / "acme.yaml").write_text(
        yaml.safe_dump(
            {
                "tenant": "acme",
                "api_keys": [hash_key(ACME_KEY)],
                "models": [
                    "gpt-mock",
                    "balanced",
                    "primary",
                    "backup",
                    "azure-mock",
                    "embed-mock",
                    "local-extractive",
                    "via-litellm",
                ],
            }
        )
    )
    (policies / "other.yaml").write_text(
        yaml.safe_dump(
            {
                "tenant": "other",
                "api_keys": [hash_key(OTHER_KEY)],
                "models": ["other-only"],
            }
        )
    )
    return root / "gateway.yaml"


@dataclass
class RunningGateway:
    server: ServerThread
    config_path: Path
    upstream: MockServer

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, key: str = ACME_KEY) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def update_yaml(path: Path, **fields: Any) -> None:
    """Set top-level fields of a YAML file (a tenant policy, gateway.yaml), keeping the rest."""
    data = yaml.safe_load(path.read_text())
    data.update(fields)
    path.write_text(yaml.safe_dump(data))


@contextmanager
def gateway_in_thread(config_path: Path, upstream: MockServer) -> Iterator[RunningGateway]:
    """The app built from `config_path`, served by uvicorn on a thread of this process."""
    server = ServerThread(create_app(load_config(config_path)))
    try:
        yield RunningGateway(server, config_path, upstream)
    finally:
        server.stop()


@contextmanager
def gateway_with(
    root: Path, upstream: MockServer, config: dict[str, Any] | None = None, acme: dict[str, Any] | None = None
) -> Iterator[RunningGateway]:
    """The test gateway (write_gateway_files) with these gateway.yaml and acme policy fields set,
    served on a thread. The caller sets MOCK_UPSTREAM_KEY (monkeypatch)."""
    config_path = write_gateway_files(root, upstream.base)
    if config:
        update_yaml(config_path, **config)
    if acme:
        update_yaml(root / "policies" / "acme.yaml", **acme)
    with gateway_in_thread(config_path, upstream) as running:
        yield running


@pytest.fixture
def gateway(
    tmp_path: Path, upstream: MockServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningGateway]:
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    with gateway_in_thread(write_gateway_files(tmp_path, upstream.base), upstream) as running:
        yield running
