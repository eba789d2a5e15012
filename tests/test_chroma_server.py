"""Multi-replica retrieval: gateways sharing a real Chroma server (`chroma run` on loopback)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway.retrieval.embedder import make_embedder
from gateway.retrieval.index import IndexStore, make_chroma_client
from gateway.retrieval.reindex import reindex
from gateway.retrieval.types import Chunk
from tests.conftest import free_port

CHROMA = shutil.which("chroma")


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if CHROMA is None:
        pytest.skip("the chroma CLI (from the chromadb package) is not installed")
    port = free_port()
    path = tmp_path_factory.mktemp("chroma-server")
    proc = subprocess.Popen(
        [CHROMA, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, "chroma run did not start"
        time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(10)


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


def test_gateway_uses_the_chroma_server(chroma_url: str, tmp_path: Path, upstream, monkeypatch) -> None:
    import yaml

    from gateway.app import create_app
    from gateway.config import load_config
    from tests.conftest import ACME_KEY, UPSTREAM_SECRET, ServerThread, write_gateway_files

    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    monkeypatch.setenv("TEST_ADMIN_KEY", "sk-admin-chroma")
    config_path = write_gateway_files(tmp_path, upstream.base, retrieval={"enabled": True})
    config = yaml.safe_load(config_path.read_text())
    config["vector_store"] = {"url": chroma_url}
    config_path.write_text(yaml.safe_dump(config))
    acme = tmp_path / "policies" / "acme.yaml"
    policy = yaml.safe_load(acme.read_text())
    policy["retrieval"] = {"enabled": True, "min_confidence": 0.2}
    acme.write_text(yaml.safe_dump(policy))
    server = ServerThread(create_app(load_config(config_path)))
    try:
        ready = httpx.get(f"{server.url}/readyz").json()
        assert (
            ready["checks"]["vector_store"]["ok"] and chroma_url in ready["checks"]["vector_store"]["detail"]
        )
        upload = httpx.post(
            f"{server.url}/admin/tenants/acme/documents",
            timeout=60,
            headers={"Authorization": "Bearer sk-admin-chroma"},
            json={
                "documents": [
                    {
                        "name": "ferry.md",
                        "content": "# Ferry\n\nThe island ferry "
                        "leaves the harbour at 7:15 and 17:45 every day.",
                    }
                ]
            },
        )
        assert upload.status_code == 200
        rebuilt = httpx.post(
            f"{server.url}/admin/tenants/acme/reindex",
            timeout=60,
            headers={"Authorization": "Bearer sk-admin-chroma"},
        )
        assert rebuilt.status_code == 200 and rebuilt.json()["documents"] == 1
        answer = httpx.post(
            f"{server.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {ACME_KEY}"},
            timeout=60,
            json={
                "model": "local-extractive",
                "messages": [{"role": "user", "content": "When does the island ferry leave the harbour?"}],
            },
        )
        assert "7:15" in answer.json()["choices"][0]["message"]["content"]
        assert answer.json()["citations"][0]["source"] == "ferry.md"
    finally:
        server.stop()
