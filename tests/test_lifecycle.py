"""Serving for real: the CLI process, readiness, graceful drain on SIGTERM, client disconnects."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    ACME_KEY,
    UPSTREAM_SECRET,
    MockServer,
    RunningGateway,
    free_port,
    serve_expecting_exit,
    update_yaml,
    write_gateway_files,
)

MSG = [{"role": "user", "content": "hi"}]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60, probe: str = "/healthz") -> None:
    """Poll `probe` until 200: /healthz once it listens, /readyz once seed corpora are ingested."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited early: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(f"{url}{probe}", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"gateway did not answer 200 on {probe}")


def serve(config: Path, port: int, *extra: str) -> subprocess.Popen:
    """`python -m gateway serve` as its own process, its output in a pipe."""
    env = {**os.environ, "MOCK_UPSTREAM_KEY": UPSTREAM_SECRET}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


@pytest.fixture
def served(tmp_path: Path, upstream: MockServer):
    port = free_port()
    proc = serve(write_gateway_files(tmp_path, upstream.base), port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_drains_in_flight_stream_then_exits_zero(served, upstream: MockServer) -> None:
    url, proc = served
    upstream.script("mock-1", "slowstream:250")  # ~1.5 s of stream
    received: list[bytes] = []
    first_chunk = threading.Event()

    def consume() -> None:
        with httpx.stream(
            "POST",
            f"{url}/v1/chat/completions",
            json={"model": "gpt-mock", "messages": MSG, "stream": True},
            headers={"Authorization": f"Bearer {ACME_KEY}"},
            timeout=30,
        ) as response:
            for chunk in response.iter_bytes():
                received.append(chunk)
                first_chunk.set()

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert first_chunk.wait(10)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.TransportError):  # no longer accepting
        httpx.get(f"{url}/healthz", timeout=1)
    consumer.join(20)
    body = b"".join(received)
    assert body.rstrip().endswith(b"data: [DONE]"), body[-200:]
    assert b'"content":" upstream"' in body and b'"finish_reason":"stop"' in body  # the whole answer arrived
    assert proc.wait(20) == 0


def test_readyz_reports_checks(served) -> None:
    url, _ = served
    response = httpx.get(f"{url}/readyz")
    assert response.status_code == 200
    data = response.json()
    assert data["status"] == "ready" and data["checks"]["policies"]["tenants"] == 2
    assert any(d["model"] == "gpt-mock" for d in data["checks"]["upstreams"]["deployments"])


def test_client_disconnect_cancels_upstream_stream(gateway: RunningGateway) -> None:
    gateway.upstream.script("mock-1", "slowstream:300")
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json={"model": "gpt-mock", "messages": MSG, "stream": True},
        headers={"Authorization": f"Bearer {ACME_KEY}"},
        timeout=30,
    ) as response:
        next(response.iter_bytes())
    # The gateway drops its upstream connection; the upstream sees the stream abandoned.
    deadline = time.monotonic() + 5
    while gateway.upstream.cancelled() == 0:
        assert time.monotonic() < deadline, "upstream stream kept running after the client left"
        time.sleep(0.1)


def test_no_config_serves_demo_tenant_with_env_key(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "RAG_GATEWAY_DEMO_KEY": "sk-my-demo"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, timeout=120, probe="/readyz")  # the demo's sample corpus is ingested
        ok = httpx.post(
            f"{url}/v1/chat/completions",
            headers={"Authorization": "Bearer sk-my-demo"},
            json={"model": "local-extractive", "messages": MSG},
            timeout=30,
        )
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]
        denied = httpx.post(
            f"{url}/v1/chat/completions",
            headers={"Authorization": "Bearer sk-demo-rag-gateway"},
            json={"model": "local-extractive", "messages": MSG},
            timeout=30,
        )
        assert denied.status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def requests_counted(metrics_text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith("rag_gateway_requests_total{")
    )


def test_metrics_add_up_every_worker(tmp_path: Path, upstream: MockServer) -> None:
    port = free_port()
    proc = serve(write_gateway_files(tmp_path, upstream.base), port, "--workers", "2")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        time.sleep(1.0)  # the second worker may start a moment after the first answers
        sent = 24
        for _ in range(sent):  # a new connection each time, so the kernel spreads them over workers
            response = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "gpt-mock", "messages": MSG},
                headers={"Authorization": f"Bearer {ACME_KEY}", "Connection": "close"},
                timeout=30,
            )
            assert response.status_code == 200
        # Whichever worker answers the scrape reports all requests, not only its own.
        for _ in range(6):
            scraped = httpx.get(f"{url}/metrics", headers={"Connection": "close"}, timeout=10)
            assert requests_counted(scraped.text) == sent
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_policy_asking_for_retrieval_that_gateway_yaml_turns_off_stops_start_up_plainly(
    tmp_path: Path, upstream: MockServer
) -> None:
    config_path = write_gateway_files(tmp_path, upstream.base, retrieval={"enabled": False})
    update_yaml(tmp_path / "policies" / "acme.yaml", retrieval={"enabled": True})
    proc = serve_expecting_exit(config_path)
    assert proc.returncode != 0
    assert "rag-gateway cannot start: tenant 'acme' turns retrieval on" in proc.stderr, proc.stderr
    assert "retrieval.enabled: false" in proc.stderr and "Traceback" not in proc.stderr
