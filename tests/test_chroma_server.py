"""Multi-replica retrieval: gateways sharing a real Chroma server (`chroma run` on loopback)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.retrieval.embedder import make_embedder
from gateway.retrieval.index import IndexStore, make_chroma_client
from gateway.retrieval.reindex import reindex
from gateway.retrieval.types import Chunk
from tests.conftest import free_port, serve_expecting_exit

# The chromadb package installs `chroma` next to the interpreter; `make test` does not put the
# venv's bin/ on PATH, so look there first.
CHROMA = shutil.which("chroma", path=str(Path(sys.executable).parent)) or shutil.which("chroma")


def start_chroma(path: Path, port: int) -> subprocess.Popen[bytes]:
    """`chroma run` on loopback, returned once its heartbeat answers."""
    assert CHROMA is not None
    proc = subprocess.Popen(
        [CHROMA, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, "chroma run did not start"
        time.sleep(0.2)


def stop_chroma(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if CHROMA is None:
        pytest.skip("the chroma CLI (from the chromadb package) is not installed")
    port = free_port()
    proc = start_chroma(tmp_path_factory.mktemp("chroma-server"), port)
    yield f"http://127.0.0.1:{port}"
    stop_chroma(proc)


def chunk(doc_id: str, text: str) -> Chunk:
    return Chunk(
        id=f"{doc_id}#0", doc_id=doc_id, text=text, source=doc_id, title=doc_id, content_hash="h-" + text
    )


def test_replicas_see_each_others_writes_and_rebuilds(chroma_url: str) -> None:
    embedder = make_embedder()
    replica_a = IndexStore(make_chroma_client(None, chroma_url), embedder.model_id)
    replica_b = IndexStore(make_chroma_client(None, chroma_url), embedder.model_id)
    tenant = f"t{int(time.time() * 1000) % 10**8}"
    index_a = replica_a.tenant(tenant)
    index_b = replica_b.tenant(tenant)
    assert len(index_b) == 0
    text = "Night buses run every 30 minutes between midnight and five in the morning."
    index_a.upsert_document("buses.md", [chunk("buses.md", text)], embedder.embed([text]))
    # Replica B still serves its snapshot until it notices the change.
    assert replica_b.refresh_if_changed(tenant) is True
    index_b = replica_b.tenant(tenant)
    query = "how often do night buses run"
    hits = index_b.search(query, embedder.embed([query])[0], top_k=3).hits
    assert hits and hits[0].chunk.doc_id == "buses.md"
    assert replica_b.refresh_if_changed(tenant) is False  # nothing new: no reopen
    # A rebuild by replica A swaps collections; B follows and keeps answering.
    result = reindex(replica_a, embedder, tenant)
    assert result.new_collection != result.old_collection
    assert replica_b.refresh_if_changed(tenant) is True
    rebuilt = replica_b.tenant(tenant)
    assert rebuilt.collection_name == result.new_collection
    hits = rebuilt.search(query, np.asarray(embedder.embed([query])[0]), top_k=3).hits
    assert hits[0].chunk.doc_id == "buses.md"


def gateway_on_chroma(tmp_path: Path, upstream: Any, monkeypatch: Any, url: str, wait_s: float = 30) -> Path:
    """gateway.yaml using the Chroma server at `url`, with retrieval on for tenant acme."""
    import yaml

    from tests.conftest import UPSTREAM_SECRET, write_gateway_files

    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    monkeypatch.setenv("TEST_ADMIN_KEY", ADMIN_KEY)
    config_path = write_gateway_files(tmp_path, upstream.base, retrieval={"enabled": True})
    config = yaml.safe_load(config_path.read_text())
    config["vector_store"] = {"url": url, "connect_wait_s": wait_s}
    config_path.write_text(yaml.safe_dump(config))
    acme = tmp_path / "policies" / "acme.yaml"
    policy = yaml.safe_load(acme.read_text())
    policy["retrieval"] = {"enabled": True, "min_confidence": 0.2}
    acme.write_text(yaml.safe_dump(policy))
    return config_path


ADMIN_KEY = "sk-admin-chroma"
FERRY = "# Ferry\n\nThe island ferry leaves the harbour at 7:15 and 17:45 every day."


def upload_ferry(base_url: str) -> None:
    upload = httpx.post(
        f"{base_url}/admin/tenants/acme/documents",
        timeout=60,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"documents": [{"name": "ferry.md", "content": FERRY}]},
    )
    assert upload.status_code == 200, upload.text


def ask_ferry(base_url: str) -> httpx.Response:
    from tests.conftest import ACME_KEY

    return httpx.post(
        f"{base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {ACME_KEY}"},
        timeout=60,
        json={
            "model": "local-extractive",
            "messages": [{"role": "user", "content": "When does the island ferry leave the harbour?"}],
        },
    )


def test_gateway_uses_the_chroma_server(chroma_url: str, tmp_path: Path, upstream, monkeypatch) -> None:
    from gateway.app import create_app
    from gateway.config import load_config
    from tests.conftest import ServerThread

    config_path = gateway_on_chroma(tmp_path, upstream, monkeypatch, chroma_url)
    server = ServerThread(create_app(load_config(config_path)))
    try:
        ready = httpx.get(f"{server.url}/readyz").json()
        assert (
            ready["checks"]["vector_store"]["ok"] and chroma_url in ready["checks"]["vector_store"]["detail"]
        )
        upload_ferry(server.url)
        rebuilt = httpx.post(
            f"{server.url}/admin/tenants/acme/reindex",
            timeout=60,
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert rebuilt.status_code == 200 and rebuilt.json()["documents"] == 1
        answer = ask_ferry(server.url)
        assert "7:15" in answer.json()["choices"][0]["message"]["content"]
        assert answer.json()["citations"][0]["source"] == "ferry.md"
    finally:
        server.stop()


def test_a_chroma_outage_answers_503_and_heals(tmp_path: Path, upstream, monkeypatch) -> None:
    if CHROMA is None:
        pytest.skip("the chroma CLI (from the chromadb package) is not installed")
    from gateway.app import create_app
    from gateway.config import load_config
    from tests.conftest import ServerThread

    port, data = free_port(), tmp_path / "chroma-data"
    chroma = start_chroma(data, port)
    config_path = gateway_on_chroma(tmp_path, upstream, monkeypatch, f"http://127.0.0.1:{port}", 5)
    server = ServerThread(create_app(load_config(config_path)))
    try:
        upload_ferry(server.url)
        assert "7:15" in ask_ferry(server.url).json()["choices"][0]["message"]["content"]

        stop_chroma(chroma)
        down = ask_ferry(server.url)
        assert down.status_code == 503, down.text
        assert down.json()["error"]["code"] == "retrieval_unavailable"
        assert down.json()["error"]["type"] == "server_error"
        assert down.headers["retry-after"] == "2"
        ready = httpx.get(f"{server.url}/readyz", timeout=10)
        assert ready.status_code == 503 and not ready.json()["checks"]["vector_store"]["ok"]
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        for path, body in (
            ("documents", {"documents": [{"name": "bus.md", "content": "Buses run hourly."}]}),
            ("reindex", None),
        ):
            failed = httpx.post(
                f"{server.url}/admin/tenants/acme/{path}", headers=admin, json=body, timeout=60
            )
            assert failed.status_code == 503, failed.text
            assert failed.json()["error"]["code"] == "retrieval_unavailable"

        chroma = start_chroma(data, port)  # same data, same port: the gateway reconnects by itself
        deadline = time.monotonic() + 30
        while (healed := ask_ferry(server.url)).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert healed.status_code == 200, healed.text
        assert "7:15" in healed.json()["choices"][0]["message"]["content"]
    finally:
        server.stop()
        stop_chroma(chroma)


def test_start_up_without_the_chroma_server_fails_with_a_plain_message(
    tmp_path: Path, upstream, monkeypatch
) -> None:

    config_path = gateway_on_chroma(tmp_path, upstream, monkeypatch, f"http://127.0.0.1:{free_port()}", 0.5)
    started = time.monotonic()
    proc = serve_expecting_exit(config_path)
    assert proc.returncode != 0
    assert "rag-gateway cannot start: the Chroma server at http://127.0.0.1:" in proc.stderr, proc.stderr
    assert "vector_store.url" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - started < 60
