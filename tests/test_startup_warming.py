"""Start-up never waits on a seed ingest: /healthz answers at once, the seeded tenant gets 503
`retrieval_warming` (with Retry-After and progress) until its corpus is built, /readyz reports the
progress and turns ready, and then the tenant gets cited answers from the whole corpus."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from tests.conftest import ACME_KEY, OTHER_KEY, free_port, write_gateway_files

FILES = 120  # enough that the ingest takes seconds on two cores, so the warming window is observable
QUESTION = "What is the speed limit in Zone B?"


def seed_folder(root: Path) -> Path:
    folder = root / "seed"
    folder.mkdir()
    for i in range(FILES):
        body = " ".join(
            f"Depot {i} section {j} keeps spare parts for tram line {i % 9} and logs inventory weekly."
            for j in range(40)
        )
        (folder / f"depot-{i:03d}.txt").write_text(body + "\n")
    (folder / "zones.txt").write_text("Vehicles in Zone B are limited to 25 km/h at all times.\n")
    return folder


def configure(root: Path, upstream_base: str) -> Path:
    config_path = write_gateway_files(
        root, upstream_base, retrieval={"enabled": True, "seed_corpus": {"acme": str(seed_folder(root))}}
    )
    acme = root / "policies" / "acme.yaml"
    policy = yaml.safe_load(acme.read_text())
    policy["retrieval"] = {"enabled": True, "min_confidence": 0.2, "on_low_confidence": "refuse"}
    acme.write_text(yaml.safe_dump(policy))
    return config_path


def launch(config_path: Path, cwd: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "MOCK_UPSTREAM_KEY": "unused"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config_path), "--port", str(port)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    return proc, f"http://127.0.0.1:{port}"


def wait_for_status(proc: subprocess.Popen, url: str, status: int, timeout_s: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == status:
                return response
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} never answered {status}"
        time.sleep(0.05)


def chat(url: str, key: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": QUESTION}]},
        timeout=30,
    )


def test_seed_ingest_runs_after_start_up_and_the_tenant_waits_for_it(tmp_path: Path, upstream) -> None:
    started = time.monotonic()
    proc, url = launch(configure(tmp_path, upstream.base), tmp_path)
    try:
        wait_for_status(proc, f"{url}/healthz", 200)
        healthy_after = time.monotonic() - started

        # While the corpus is being built: the seeded tenant is told to retry, with progress.
        warming = chat(url, ACME_KEY, "local-extractive")
        readyz = httpx.get(f"{url}/readyz", timeout=5)
        assert warming.status_code == 503, (healthy_after, warming.text)
        error = warming.json()["error"]
        assert error["code"] == "retrieval_warming" and error["type"] == "server_error"
        assert f"of {FILES + 1} files" in error["message"] or "of ? files" in error["message"]
        assert int(warming.headers["Retry-After"]) > 0
        assert readyz.status_code == 503
        seed = readyz.json()["checks"]["seed_corpora"]
        assert seed["ok"] is False and seed["tenants"][0]["tenant"] == "acme"
        # Another tenant, without retrieval, is served meanwhile.
        other = httpx.post(
            f"{url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {OTHER_KEY}"},
            json={"model": "other-only", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert other.status_code == 200, other.text

        readyz = wait_for_status(proc, f"{url}/readyz", 200, timeout_s=240)
        progress = readyz.json()["checks"]["seed_corpora"]["tenants"][0]
        assert progress["done"] and progress["error"] is None
        assert progress["files_done"] == progress["files_total"] == FILES + 1

        answer = chat(url, ACME_KEY, "local-extractive")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert "25 km/h" in body["choices"][0]["message"]["content"]
        assert any(c["source"].endswith("zones.txt") for c in body["citations"]), body["citations"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    # The bound is generous for a loaded CI machine; the point is that it does not wait on the ingest.
    assert healthy_after < 10, f"/healthz took {healthy_after:.1f} s"


def test_sigterm_during_a_seed_ingest_exits_promptly(tmp_path: Path, upstream) -> None:
    proc, url = launch(configure(tmp_path, upstream.base), tmp_path)
    try:
        wait_for_status(proc, f"{url}/readyz", 503)  # listening, and the seed is still running
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        # The ingest thread stops after its current file rather than finishing the corpus.
        assert time.monotonic() - stopping < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_only_a_corpus_built_from_empty_makes_its_tenant_wait() -> None:
    from gateway.errors import GatewayError
    from gateway.retrieval.warmup import CorpusWarmup

    warmup = CorpusWarmup(retry_after_s=7)
    warmup.plan("fresh", "/corpus/fresh", index_is_empty=True)
    warmup.plan("restarted", "/corpus/restarted", index_is_empty=False)
    warmup.check("restarted")  # a restart's incremental sync serves the corpus it already has
    warmup.check("unseeded")
    try:
        warmup.check("fresh")
    except GatewayError as exc:
        assert exc.status == 503 and exc.code == "retrieval_warming"
        assert exc.headers == {"Retry-After": "7"}
    else:
        raise AssertionError("a tenant whose corpus is being built from empty was served")
    for seed in warmup.seeds:
        seed.done = True
    warmup.check("fresh")
    assert warmup.ready
