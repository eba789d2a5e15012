"""No tenant can stall another: a 1.2 MB answer, streamed or JSON, through output guardrails leaves the
event loop free for everyone else's small requests."""

from __future__ import annotations

import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    ACME_KEY,
    OTHER_KEY,
    UPSTREAM_SECRET,
    MockServer,
    spawn_gateway,
    update_yaml,
    wait_until_answering,
    write_gateway_files,
)

ANSWER_CHARS = 1_200_000


def _launch(tmp_path: Path, upstream: MockServer) -> tuple[subprocess.Popen, str]:
    config_path = write_gateway_files(tmp_path, upstream.base)
    update_yaml(tmp_path / "policies" / "acme.yaml", output_guardrails={"enabled": True})
    server, url = spawn_gateway(config_path, tmp_path, {"MOCK_UPSTREAM_KEY": UPSTREAM_SECRET})
    wait_until_answering(server, f"{url}/readyz")
    return server, url


@pytest.mark.parametrize(
    ("stream", "upstream_chunk"),
    [(True, 4096), (True, 64), (False, 0)],
    ids=["stream-4k", "stream-64", "json"],
)
def test_a_huge_guarded_answer_does_not_stall_another_tenant(
    tmp_path: Path, upstream: MockServer, stream: bool, upstream_chunk: int
) -> None:
    server, url = _launch(tmp_path, upstream)
    try:
        upstream.script("mock-1", f"bulk:{ANSWER_CHARS}:{upstream_chunk}")
        received: list[int] = []
        finished = threading.Event()

        def stream_the_big_answer() -> None:
            body = {"model": "gpt-mock", "stream": stream, "messages": [{"role": "user", "content": "go"}]}
            headers = {"Authorization": f"Bearer {ACME_KEY}"}
            with httpx.stream(
                "POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120
            ) as r:
                assert r.status_code == 200
                for chunk in r.iter_bytes():
                    received.append(len(chunk))
            finished.set()

        streamer = threading.Thread(target=stream_the_big_answer, daemon=True)
        streamer.start()
        latencies: list[float] = []
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {OTHER_KEY}"}, timeout=30
        ) as other:
            small = {"model": "other-only", "messages": [{"role": "user", "content": "hi"}]}
            other.post("/v1/chat/completions", json=small)  # connection open before timing
            deadline = time.monotonic() + 120
            while not finished.is_set() and time.monotonic() < deadline:
                started = time.perf_counter()
                assert other.post("/v1/chat/completions", json=small).status_code == 200
                latencies.append((time.perf_counter() - started) * 1000)
        streamer.join(5)
        assert finished.is_set(), "the guarded stream did not finish"
        # The whole answer reached the client (SSE framing adds to it, nothing is lost).
        assert sum(received) > ANSWER_CHARS
        assert len(latencies) >= 10, f"only {len(latencies)} small requests ran during the stream"
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        assert p99 < 50, (
            f"another tenant's p99 {p99:.1f} ms (median {statistics.median(latencies):.1f} ms, "
            f"max {latencies[-1]:.1f} ms over {len(latencies)} requests)"
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
