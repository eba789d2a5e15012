"""OpenAI's Vector Stores API on the gateway's own retrieval, through the official openai SDK:
stores, files attached and ingested in the background (the SDK's create_and_poll), batches,
search with attribute filters, detach and delete; tenants isolated; bad requests are clear 400s;
answers validated against OpenAI's OpenAPI description."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.files import FileStore
from gateway.vector_stores import VectorStoreRegistry, corpus_store_id
from tests.conftest import (
    ACME_KEY,
    OTHER_KEY,
    UPSTREAM_SECRET,
    MockServer,
    RunningGateway,
    gateway_with,
    spawn_gateway,
    update_yaml,
    wait_until_answering,
    write_gateway_files,
)
from tests.contract import check

PARKING = b"# Parking\n\nA resident parking permit costs 30 EUR a year and is valid in one zone.\n"
ZONES = b"# Speed zones\n\nThe speed limit in Zone B is 25 km/h near the school, 50 km/h elsewhere.\n"
OPENING = b"# Library\n\nThe city library opens at 9:00 on weekdays and at 10:00 on Saturdays.\n"


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, upstream: MockServer) -> Iterator[RunningGateway]:
    """One gateway with retrieval on for the module: loading the embedder takes seconds."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
        root = tmp_path_factory.mktemp("vector-stores")
        with gateway_with(root, upstream, config={"retrieval": {"enabled": True}}) as running:
            yield running


def sdk(gateway: RunningGateway, key: str = ACME_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def upload(client: openai.OpenAI, name: str, data: bytes) -> str:
    return client.files.create(file=(name, data), purpose="assistants").id


def wait_completed(client: openai.OpenAI, store_id: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while client.vector_stores.retrieve(store_id).file_counts.in_progress:
        assert time.monotonic() < deadline, "the store's files were not processed in time"
        time.sleep(0.1)


def test_a_store_is_built_searched_filtered_and_emptied_with_the_sdk(stores: RunningGateway) -> None:
    client = sdk(stores)
    parking, zones = upload(client, "parking.md", PARKING), upload(client, "zones.md", ZONES)
    store = client.vector_stores.create(name="city", file_ids=[parking], metadata={"team": "ops"})
    assert store.name == "city" and store.metadata == {"team": "ops"} and store.file_counts.total == 1
    attached = client.vector_stores.files.create_and_poll(
        vector_store_id=store.id, file_id=zones, attributes={"topic": "traffic", "year": 2024}
    )
    assert attached.status == "completed" and attached.last_error is None
    wait_completed(client, store.id)
    assert client.vector_stores.retrieve(store.id).file_counts.completed == 2

    results = client.vector_stores.search(store.id, query="How much does a resident parking permit cost?")
    assert results.data[0].filename == "parking.md" and results.data[0].file_id == parking
    assert "30 EUR" in results.data[0].content[0].text and 0 < results.data[0].score <= 1
    only_traffic = client.vector_stores.search(
        store.id, query="parking permit", filters={"type": "eq", "key": "topic", "value": "traffic"}
    )
    assert {r.file_id for r in only_traffic.data} == {zones}
    compound = client.vector_stores.search(
        store.id,
        query="speed limit",
        filters={
            "type": "and",
            "filters": [
                {"type": "gte", "key": "year", "value": 2020},
                {"type": "ne", "key": "topic", "value": "parks"},
            ],
        },
    )
    assert {r.file_id for r in compound.data} == {zones}
    strict = client.vector_stores.search(store.id, query="parking", ranking_options={"score_threshold": 0.99})
    assert strict.data == []

    listed = client.vector_stores.files.list(vector_store_id=store.id)
    assert {f.id for f in listed.data} == {parking, zones}
    client.vector_stores.files.delete(file_id=parking, vector_store_id=store.id)
    after = client.vector_stores.search(store.id, query="How much does a resident parking permit cost?")
    assert parking not in {r.file_id for r in after.data}
    assert client.vector_stores.delete(store.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(store.id)


def test_file_batches_poll_to_completion(stores: RunningGateway) -> None:
    client = sdk(stores)
    store = client.vector_stores.create(name="batch")
    ids = [upload(client, "library.md", OPENING), upload(client, "zones.md", ZONES)]
    batch = client.vector_stores.file_batches.create_and_poll(vector_store_id=store.id, file_ids=ids)
    assert batch.status == "completed" and batch.file_counts.completed == 2
    files = client.vector_stores.file_batches.list_files(vector_store_id=store.id, batch_id=batch.id)
    assert {f.id for f in files.data} == set(ids)
    results = client.vector_stores.search(store.id, query="When does the library open on Saturday?")
    assert results.data[0].filename == "library.md"


def test_a_file_that_cannot_be_read_fails_with_its_reason(stores: RunningGateway) -> None:
    client = sdk(stores)
    empty = upload(client, "empty.md", b"   \n")
    store = client.vector_stores.create(name="broken")
    failed = client.vector_stores.files.create_and_poll(vector_store_id=store.id, file_id=empty)
    assert failed.status == "failed" and failed.last_error is not None
    assert "empty" in failed.last_error.message
    assert client.vector_stores.retrieve(store.id).file_counts.failed == 1


def test_answers_follow_openais_schemas(stores: RunningGateway) -> None:
    client = sdk(stores)
    headers = {"Authorization": f"Bearer {ACME_KEY}"}
    file_id = upload(client, "parking.md", PARKING)
    created = httpx.post(
        f"{stores.url}/v1/vector_stores", headers=headers, json={"name": "schema", "file_ids": [file_id]}
    )
    assert created.status_code == 200, created.text
    check(created.json(), "VectorStoreObject")
    store_id = created.json()["id"]
    wait_completed(client, store_id)
    base = f"{stores.url}/v1/vector_stores/{store_id}"
    check(httpx.get(base, headers=headers).json(), "VectorStoreObject")
    check(httpx.get(f"{base}/files/{file_id}", headers=headers).json(), "VectorStoreFileObject")
    check(httpx.get(f"{stores.url}/v1/vector_stores", headers=headers).json(), "ListVectorStoresResponse")
    searched = httpx.post(f"{base}/search", headers=headers, json={"query": "parking permit price"})
    check(searched.json(), "VectorStoreSearchResultsPage")
    assert 0 <= float(searched.headers["x-gateway-confidence"]) <= 1  # ours, beside OpenAI's page
    check(httpx.delete(base, headers=headers).json(), "DeleteVectorStoreResponse")


def test_another_tenants_store_is_not_found(stores: RunningGateway) -> None:
    client = sdk(stores)
    store = client.vector_stores.create(name="mine")
    other = sdk(stores, OTHER_KEY)
    assert store.id not in {s.id for s in other.vector_stores.list().data}
    for call in (
        lambda: other.vector_stores.retrieve(store.id),
        lambda: other.vector_stores.search(store.id, query="x"),
        lambda: other.vector_stores.delete(store.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    # ...nor can another tenant attach acme's file to a store of its own.
    acme_file = upload(client, "parking.md", PARKING)
    theirs = other.vector_stores.create(name="theirs")
    with pytest.raises(openai.NotFoundError):
        other.vector_stores.files.create(vector_store_id=theirs.id, file_id=acme_file)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "",
            {
                "chunking_strategy": {
                    "type": "static",
                    "static": {"max_chunk_size_tokens": 4000, "chunk_overlap_tokens": 0},
                }
            },
            "chunking_strategy.static.max_chunk_size_tokens",
        ),
        ("", {"expires_after": {"anchor": "created_at", "days": 3}}, "expires_after.anchor"),
        ("", {"metadata": {"k": 5}}, "metadata"),
        ("", {"file_ids": ["file-000000000000000000000000"]}, "file_id"),
        ("/search", {"query": ""}, "query"),
        ("/search", {"query": "x", "max_num_results": 51}, "max_num_results"),
        ("/search", {"query": "x", "filters": {"type": "like", "key": "a", "value": "b"}}, "filters"),
        ("/search", {"query": "x", "rewrite_query": True}, "rewrite_query"),
        ("/files", {}, "file_id"),
    ],
)
def test_bad_requests_name_the_field(stores: RunningGateway, path: str, body: dict, param: str) -> None:
    headers = {"Authorization": f"Bearer {ACME_KEY}"}
    store = sdk(stores).vector_stores.create(name="errors")
    url = f"{stores.url}/v1/vector_stores" + (f"/{store.id}{path}" if path else "")
    response = httpx.post(url, headers=headers, json=body)
    assert response.status_code in (400, 404), response.text
    error = response.json()["error"]
    assert error["param"] == param, error


def test_files_a_stopped_process_was_ingesting_are_ingested_at_start_up(
    tmp_path: Path, upstream: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a process killed mid-ingestion leaves: the file stored, its store entry in_progress.
    folder = tmp_path / ".data" / "files"
    stored = FileStore(folder).save("acme", "parking.md", "assistants", io.BytesIO(PARKING))
    registry = VectorStoreRegistry(folder)
    record = registry.create("acme", "left behind", {}, None, None)
    registry.update_file(
        "acme", record["id"], stored.id, status="in_progress", created_at=int(time.time()), attributes={},
        chunking={"max_tokens": 240, "overlap_tokens": 40}, usage_bytes=stored.bytes, last_error=None,
    )  # fmt: skip
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    with gateway_with(tmp_path, upstream, config={"retrieval": {"enabled": True}}) as running:
        client = sdk(running)
        wait_completed(client, record["id"])
        assert client.vector_stores.retrieve(record["id"]).file_counts.completed == 1
        found = client.vector_stores.search(record["id"], query="resident parking permit price")
        assert found.data[0].file_id == stored.id


def test_the_tenants_retrieval_corpus_is_a_store_that_chat_answers_from(
    tmp_path: Path, upstream: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One corpus model: a file attached to the corpus store is what chat retrieval cites."""
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    acme = {"retrieval": {"enabled": True, "min_confidence": 0.0}}
    with gateway_with(tmp_path, upstream, config={"retrieval": {"enabled": True}}, acme=acme) as running:
        client = sdk(running)
        (corpus,) = [
            s for s in client.vector_stores.list().data if s.metadata.get("kind") == "retrieval corpus"
        ]
        assert client.vector_stores.retrieve(corpus.id).id == corpus.id
        file_id = upload(client, "parking.md", PARKING)
        attached = client.vector_stores.files.create_and_poll(vector_store_id=corpus.id, file_id=file_id)
        assert attached.status == "completed"
        answer = httpx.post(
            f"{running.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {ACME_KEY}"},
            json={
                "model": "gpt-mock",
                "messages": [{"role": "user", "content": "How much is a resident parking permit?"}],
            },
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["citations"][0]["source"] == "parking.md"  # cited by its file name
        found = client.vector_stores.search(corpus.id, query="resident parking permit")
        assert found.data[0].file_id == file_id
        with pytest.raises(openai.BadRequestError):
            client.vector_stores.delete(corpus.id)
        client.vector_stores.files.delete(file_id=file_id, vector_store_id=corpus.id)
        after = client.vector_stores.search(corpus.id, query="resident parking permit")
        assert file_id not in {r.file_id for r in after.data}


def test_uploads_attaches_and_searches_count_against_the_rate_limit(
    tmp_path: Path, upstream: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same requests-per-minute window as model calls: a search past it is OpenAI's 429."""
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    acme = {"rate_limit": {"enabled": True, "rpm": 4}}
    with gateway_with(tmp_path, upstream, config={"retrieval": {"enabled": True}}, acme=acme) as running:
        client = sdk(running)
        file_id = upload(client, "parking.md", PARKING)  # 1
        store = client.vector_stores.create(name="limited")  # 2
        client.vector_stores.files.create(vector_store_id=store.id, file_id=file_id)  # 3
        client.vector_stores.retrieve(store.id)  # reading a store does no work: not counted
        client.vector_stores.search(store.id, query="parking permit")  # 4
        with pytest.raises(openai.RateLimitError) as raised:
            client.vector_stores.search(store.id, query="parking permit")
        assert raised.value.code == "rate_limit_exceeded"
        assert "POST /v1/vector_stores/" in raised.value.message and "Limit 4" in raised.value.message
        assert int(raised.value.response.headers["retry-after"]) >= 1
        chat = httpx.post(
            f"{running.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {ACME_KEY}"},
            json={"model": "gpt-mock", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert chat.status_code == 429, "searches and model calls share the tenant's window"


def test_a_batch_over_the_tenants_ingestion_share_is_refused_whole(
    tmp_path: Path, upstream: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    config = {"retrieval": {"enabled": True}, "files": {"ingest_queue_per_tenant": 2}}
    with gateway_with(tmp_path, upstream, config=config) as running:
        client = sdk(running)
        ids = [upload(client, f"doc{i}.md", OPENING) for i in range(3)]
        store = client.vector_stores.create(name="bounded")
        with pytest.raises(openai.RateLimitError) as raised:
            client.vector_stores.file_batches.create(vector_store_id=store.id, file_ids=ids)
        assert "at most 2 (files.ingest_queue_per_tenant)" in raised.value.message
        assert client.vector_stores.files.list(vector_store_id=store.id).data == []  # nothing half-done
        batch = client.vector_stores.file_batches.create_and_poll(vector_store_id=store.id, file_ids=ids[:2])
        assert batch.file_counts.completed == 2
        # Finished files free their places.
        done = client.vector_stores.files.create_and_poll(vector_store_id=store.id, file_id=ids[2])
        assert done.status == "completed"


def test_a_process_killed_mid_ingest_keeps_the_store_searchable_and_finishes_on_restart(
    tmp_path: Path, upstream: MockServer
) -> None:
    """SIGKILL while a large file is being ingested: after the restart the file that was already
    there answers as before, and the interrupted file is ingested again to completion."""
    config_path = write_gateway_files(tmp_path, upstream.base)
    update_yaml(config_path, retrieval={"enabled": True})
    env = {"MOCK_UPSTREAM_KEY": UPSTREAM_SECRET}
    server, url = spawn_gateway(config_path, tmp_path, env)
    try:
        wait_until_answering(server, f"{url}/healthz")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=ACME_KEY, max_retries=0)
        parking = upload(client, "parking.md", PARKING)
        store = client.vector_stores.create(name="crash", file_ids=[parking])
        wait_completed(client, store.id)
        before = client.vector_stores.search(store.id, query="resident parking permit price").data
        sections = [
            f"## Section {i}\n\nItem {i} of the long manual says step {i} takes {i} minutes.\n"
            for i in range(3000)
        ]
        big = upload(client, "manual.md", ("# Manual\n\n" + "".join(sections)).encode())
        attached = client.vector_stores.files.create(vector_store_id=store.id, file_id=big)
        assert attached.status == "in_progress"
    finally:
        server.kill()  # SIGKILL: no shutdown, the ingestion is cut wherever it is
        server.wait(10)
    server, url = spawn_gateway(config_path, tmp_path, env)
    try:
        wait_until_answering(server, f"{url}/healthz")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=ACME_KEY, max_retries=0)
        after = client.vector_stores.search(store.id, query="resident parking permit price").data
        assert [(r.file_id, r.content[0].text) for r in after[:1]] == [(parking, before[0].content[0].text)]
        wait_completed(client, store.id, timeout_s=240)
        assert client.vector_stores.files.retrieve(big, vector_store_id=store.id).status == "completed"
        found = client.vector_stores.search(store.id, query="How long does step 2999 take?").data
        assert any("step 2999 takes 2999 minutes" in r.content[0].text for r in found)
    finally:
        server.terminate()
        server.wait(30)


def test_results_of_an_ingestion_do_not_bring_back_a_detached_file(tmp_path: Path) -> None:
    registry = VectorStoreRegistry(tmp_path)
    store = registry.create("acme", "s", {}, None, None)
    for file_id in ("file-a", "file-b"):
        registry.update_file("acme", store["id"], file_id, status="in_progress", attributes={})
    registry.remove_file("acme", store["id"], "file-b")  # detached while it was being ingested
    done = {"status": "completed", "last_error": None}
    gone = registry.finish_files("acme", store["id"], {"file-a": done, "file-b": done})
    assert gone == {"file-b"}
    record = registry.get("acme", store["id"])
    assert record is not None and set(record["files"]) == {"file-a"}
    assert record["files"]["file-a"]["status"] == "completed"
    assert registry.finish_files("acme", "vs_gone", {"file-a": done}) == {"file-a"}


def _attach_many(root: str, store_id: str, prefix: str, start: Any) -> None:
    registry = VectorStoreRegistry(Path(root))
    start.wait(30)
    for i in range(200):
        registry.update_file("acme", store_id, f"file-{prefix}{i}", status="in_progress", attributes={})


def test_replicas_sharing_the_files_dir_lose_no_change(tmp_path: Path) -> None:
    """Two processes changing one store at once (as replicas sharing files.dir do): every change kept."""
    import multiprocessing

    store = VectorStoreRegistry(tmp_path).create("acme", "shared", {}, None, None)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)  # both begin writing at the same moment
    workers = [
        context.Process(target=_attach_many, args=(str(tmp_path), store["id"], p, start)) for p in "ab"
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    record = VectorStoreRegistry(tmp_path).get("acme", store["id"])
    assert record is not None and len(record["files"]) == 400


def test_documents_the_admin_api_ingests_are_files_of_the_corpus_store(
    tmp_path: Path, upstream: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One corpus model: what `rag-gateway ingest` or the admin API put in is listed, counted and
    detachable in the corpus store like an attached file."""
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    monkeypatch.setenv("TEST_ADMIN_KEY", "sk-admin-corpus")
    acme = {"retrieval": {"enabled": True, "min_confidence": 0.0}}
    with gateway_with(tmp_path, upstream, config={"retrieval": {"enabled": True}}, acme=acme) as running:
        httpx.post(
            f"{running.url}/admin/tenants/acme/documents",
            headers={"Authorization": "Bearer sk-admin-corpus"},
            json={"documents": [{"name": "zones.md", "content": ZONES.decode()}]},
            timeout=60,
        ).raise_for_status()
        client = sdk(running)
        corpus = corpus_store_id("acme")
        attached = client.vector_stores.files.create_and_poll(
            vector_store_id=corpus, file_id=upload(client, "parking.md", PARKING)
        )
        listed = {f.id: f.status for f in client.vector_stores.files.list(vector_store_id=corpus).data}
        assert listed == {"zones.md": "completed", attached.id: "completed"}
        assert client.vector_stores.retrieve(corpus).file_counts.completed == 2
        (listed_corpus,) = [s for s in client.vector_stores.list().data if s.id == corpus]
        assert listed_corpus.file_counts.completed == 2  # the list counts as retrieve does
        assert client.vector_stores.files.retrieve("zones.md", vector_store_id=corpus).status == "completed"
        found = client.vector_stores.search(corpus, query="speed limit in Zone B")
        assert found.data[0].file_id == "zones.md"
        client.vector_stores.files.delete(file_id="zones.md", vector_store_id=corpus)
        after = client.vector_stores.search(corpus, query="speed limit in Zone B")
        assert "zones.md" not in {r.file_id for r in after.data}
        assert [f.id for f in client.vector_stores.files.list(vector_store_id=corpus).data] == [attached.id]


def test_a_file_attached_twice_at_once_is_ingested_once(stores: RunningGateway) -> None:
    client = sdk(stores)
    store = client.vector_stores.create(name="twice")
    library = upload(client, "library.md", OPENING)
    batch = client.vector_stores.file_batches.create_and_poll(
        vector_store_id=store.id, file_ids=[library, library]
    )
    assert batch.status == "completed"
    assert client.vector_stores.files.retrieve(library, vector_store_id=store.id).status == "completed"
    found = client.vector_stores.search(store.id, query="When does the library open on Saturdays?")
    assert [r.file_id for r in found.data] == [library]
