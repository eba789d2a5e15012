"""The MCP server at /mcp, through the official `mcp` client over streamable HTTP: authenticated by
the tenant's key, `search` ranks the passages of every store of the tenant (or those named) with
their source and confidence, `fetch` returns a passage or document by id, and a tenant without
documents gets a clear tool error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from gateway.vector_stores import corpus_store_id
from tests.conftest import ACME_KEY, OTHER_KEY, UPSTREAM_SECRET, MockServer, RunningGateway, gateway_with

ADMIN = "sk-admin-mcp"
DOCS = {
    "zones.md": "# Zones\n\nThe speed limit in Zone B is 25 km/h near the school.",
    "parking.md": "# Parking\n\nA resident parking permit costs 30 EUR a year.",
}
LIBRARY = b"# Library\n\nThe city library opens at 9:00 on weekdays and at 10:00 on Saturdays.\n"


@pytest.fixture
def corpus(tmp_path: Path, upstream: MockServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningGateway]:
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    monkeypatch.setenv("TEST_ADMIN_KEY", ADMIN)
    acme = {"retrieval": {"enabled": True, "min_confidence": 0.3}}
    with gateway_with(tmp_path, upstream, config={"retrieval": {"enabled": True}}, acme=acme) as running:
        httpx.post(
            f"{running.url}/admin/tenants/acme/documents",
            headers={"Authorization": f"Bearer {ADMIN}"},
            json={"documents": [{"name": n, "content": c} for n, c in DOCS.items()]},
            timeout=60,
        ).raise_for_status()
        yield running


async def call(gateway: RunningGateway, key: str, tool: str, arguments: dict[str, Any]) -> tuple[bool, Any]:
    """(is_error, the tool's JSON answer or error text) of one call, as an agent makes it."""
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        async with streamable_http_client(f"{gateway.url}/mcp/", http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                assert {t.name for t in (await session.list_tools()).tools} == {"search", "fetch"}
                result = await session.call_tool(tool, arguments)
    text = result.content[0].text
    return result.is_error, (text if result.is_error else json.loads(text))


async def test_search_and_fetch_the_tenants_corpus(corpus: RunningGateway) -> None:
    failed, found = await call(corpus, ACME_KEY, "search", {"query": "What is the speed limit in Zone B?"})
    assert not failed
    top = found["results"][0]
    assert top["source"] == "zones.md" and "25 km/h" in top["snippet"] and 0 <= top["score"] <= 1
    assert 0 <= found["confidence"] <= 1 and found["refuse"] is (found["confidence"] < 0.3)
    failed, passage = await call(corpus, ACME_KEY, "fetch", {"id": top["id"]})
    assert not failed and passage["source"] == "zones.md" and "25 km/h" in passage["text"]
    store_id = top["vector_store_id"]
    assert top["id"].startswith(f"{store_id}/") and store_id == corpus_store_id("acme")
    failed, document = await call(corpus, ACME_KEY, "fetch", {"id": f"{store_id}/parking.md"})
    assert not failed and "30 EUR" in document["text"]
    failed, message = await call(corpus, ACME_KEY, "fetch", {"id": f"{store_id}/nope.md#0"})
    assert failed and "nothing with id" in message
    failed, message = await call(corpus, ACME_KEY, "fetch", {"id": "parking.md"})
    assert failed and "'<vector store id>/<id>'" in message


async def test_search_covers_every_store_of_the_tenant_or_the_ones_named(corpus: RunningGateway) -> None:
    client = openai.OpenAI(base_url=f"{corpus.url}/v1", api_key=ACME_KEY, max_retries=0)
    library = client.files.create(file=("library.md", LIBRARY), purpose="assistants")
    store = client.vector_stores.create(name="library")
    done = client.vector_stores.files.create_and_poll(vector_store_id=store.id, file_id=library.id)
    assert done.status == "completed"
    question = "When does the city library open on Saturdays?"
    failed, found = await call(corpus, ACME_KEY, "search", {"query": question})
    assert not failed
    top = found["results"][0]
    assert (top["source"], top["file_id"], top["vector_store_id"]) == ("library.md", library.id, store.id)
    failed, passage = await call(corpus, ACME_KEY, "fetch", {"id": top["id"]})
    assert not failed and "10:00" in passage["text"]
    corpus_only = {"query": question, "vector_store_ids": [corpus_store_id("acme")]}
    failed, found = await call(corpus, ACME_KEY, "search", corpus_only)
    assert not failed and store.id not in {r["vector_store_id"] for r in found["results"]}
    # Another tenant's store answers exactly as an unknown one does.
    failed, message = await call(
        corpus, OTHER_KEY, "search", {"query": question, "vector_store_ids": [store.id]}
    )
    assert failed and f"No vector store found with id '{store.id}'" in message


async def test_a_tenant_without_documents_gets_a_tool_error(corpus: RunningGateway) -> None:
    failed, message = await call(corpus, OTHER_KEY, "search", {"query": "speed limit"})
    assert failed and "has no documents to search" in message


def test_a_request_without_a_valid_key_is_a_401(corpus: RunningGateway) -> None:
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        response = httpx.post(
            f"{corpus.url}/mcp/", headers=headers, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"


async def test_tool_calls_count_against_the_rate_limit(
    tmp_path: Path, upstream: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each tool call takes one request from the tenant's window; the session set-up takes none."""
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    acme = {"retrieval": {"enabled": True}, "rate_limit": {"enabled": True, "rpm": 2}}
    with gateway_with(tmp_path, upstream, config={"retrieval": {"enabled": True}}, acme=acme) as running:
        for _ in range(2):
            failed, _ = await call(running, ACME_KEY, "search", {"query": "speed limit"})
            assert not failed
        failed, message = await call(running, ACME_KEY, "search", {"query": "speed limit"})
        assert failed and "Rate limit reached for the MCP tool 'search'" in message
