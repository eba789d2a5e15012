"""Retrieval through the gateway: ingest, cited injection, confidence, refusal, tenant isolation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from gateway.app import create_app
from gateway.config import load_config
from gateway.pricing import Pricing
from tests.conftest import (
    ACME_KEY,
    OTHER_KEY,
    UPSTREAM_SECRET,
    MockServer,
    RunningGateway,
    ServerThread,
    update_yaml,
    write_gateway_files,
)

ADMIN_KEY = "sk-admin-test-9999"
CHAT = "/v1/chat/completions"

DOCS = {
    "zones.md": "# Speed limits\n\n## Zone A\n\nThe speed limit in Zone A is 40 km/h on weekdays.\n\n"
    "## Zone B\n\nIn Zone B the limit is 25 km/h because of the school.\n",
    "parking.md": "# Parking\n\nResident parking permits cost 120 EUR per year "
    "and are issued by the town hall.\n",
    "hours.txt": "The town hall is open Monday to Friday from 8:00 to 16:00. "
    "It is closed on public holidays.\n",
}
OFF_TOPIC = "Which chess opening did the 1972 world champion prefer with the black pieces?"


def retrieval_policy(**overrides: object) -> dict:
    return {"enabled": True, "min_confidence": 0.2, "on_low_confidence": "refuse", **overrides}


@pytest.fixture
def rag(tmp_path: Path, upstream: MockServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningGateway]:
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    monkeypatch.setenv("TEST_ADMIN_KEY", ADMIN_KEY)
    config_path = write_gateway_files(tmp_path, upstream.base, retrieval={"enabled": True})
    policies = tmp_path / "policies"
    for tenant in ("acme", "other"):
        data = yaml.safe_load((policies / f"{tenant}.yaml").read_text())
        data["retrieval"] = retrieval_policy()
        if tenant == "other":
            data["models"] = ["other-only", "local-extractive"]
        (policies / f"{tenant}.yaml").write_text(yaml.safe_dump(data))
    server = ServerThread(create_app(load_config(config_path)))
    gateway = RunningGateway(server, config_path, upstream)
    response = httpx.post(
        f"{gateway.url}/admin/tenants/acme/documents",
        timeout=60,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"documents": [{"name": n, "content": c} for n, c in DOCS.items()]},
    )
    assert response.status_code == 200, response.text
    yield gateway
    server.stop()


def ask(
    gateway: RunningGateway, question: str, model: str = "gpt-mock", key: str = ACME_KEY, **extra: object
) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}{CHAT}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
        json={"model": model, "messages": [{"role": "user", "content": question}], **extra},
    )


def test_sources_are_injected_and_cited(rag: RunningGateway) -> None:
    response = ask(rag, "What is the speed limit in Zone B?")
    assert response.status_code == 200
    assert float(response.headers["x-gateway-confidence"]) >= 0.2
    citations = response.json()["citations"]
    assert citations[0]["source"] == "zones.md" and citations[0]["id"] == 1
    assert citations[0]["section"].startswith("Speed limits")
    system = rag.upstream.requests()[-1]["body"]["messages"][0]
    assert system["role"] == "system" and "[1] Source: zones.md" in system["content"]
    assert "25 km/h" in system["content"] and "cite" in system["content"].lower()


def test_off_topic_question_is_refused_without_upstream_call(rag: RunningGateway) -> None:
    response = ask(rag, OFF_TOPIC)
    assert response.status_code == 200
    assert response.headers["x-gateway-refused"] == "low_confidence"
    body = response.json()
    assert "could not find" in body["choices"][0]["message"]["content"]
    assert body["usage"]["total_tokens"] == 0 and body["citations"] == []
    assert rag.upstream.requests() == []


def test_streaming_refusal_and_streaming_citations_through_the_sdk(rag: RunningGateway) -> None:
    client = openai.OpenAI(base_url=f"{rag.url}/v1", api_key=ACME_KEY, max_retries=0)
    refused = list(
        client.chat.completions.create(
            model="gpt-mock", stream=True, messages=[{"role": "user", "content": OFF_TOPIC}]
        )
    )
    assert "could not find" in "".join(c.choices[0].delta.content or "" for c in refused if c.choices)
    chunks = list(
        client.chat.completions.create(
            model="gpt-mock",
            stream=True,
            messages=[{"role": "user", "content": "When is the town hall open?"}],
        )
    )
    last = chunks[-1].model_dump()
    assert last["choices"] == [] and last["citations"][0]["source"] == "hours.txt"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the mock upstream."


def test_local_extractive_answers_from_the_sources(rag: RunningGateway) -> None:
    response = ask(rag, "How much does a resident parking permit cost?", model="local-extractive")
    content = response.json()["choices"][0]["message"]["content"]
    assert "120 EUR" in content and "[1]" in content


def test_follow_up_is_searched_with_the_previous_turn(rag: RunningGateway) -> None:
    messages = [
        {"role": "user", "content": "What is the speed limit in Zone A?"},
        {"role": "assistant", "content": "40 km/h [1]"},
        {"role": "user", "content": "and in Zone B?"},
    ]
    response = httpx.post(
        f"{rag.url}{CHAT}",
        headers={"Authorization": f"Bearer {ACME_KEY}"},
        timeout=60,
        json={"model": "gpt-mock", "messages": messages},
    )
    assert response.json()["citations"][0]["source"] == "zones.md"


def test_tenants_never_see_each_others_documents(rag: RunningGateway) -> None:
    response = ask(rag, "What is the speed limit in Zone B?", model="local-extractive", key=OTHER_KEY)
    assert response.headers["x-gateway-refused"] == "low_confidence"  # other's corpus is empty
    assert response.json()["citations"] == []


def test_warn_and_passthrough_policies(rag: RunningGateway) -> None:
    policy_file = rag.config_path.parent / "policies" / "acme.yaml"
    data = yaml.safe_load(policy_file.read_text())
    data["retrieval"] = retrieval_policy(on_low_confidence="warn")
    policy_file.write_text(yaml.safe_dump(data))
    import time

    deadline = time.monotonic() + 3
    while "x-gateway-warning" not in (response := ask(rag, OFF_TOPIC)).headers:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    system_messages = [
        m["content"] for m in rag.upstream.requests()[-1]["body"]["messages"] if m["role"] == "system"
    ]
    assert any("how certain you are" in m for m in system_messages)
    assert response.json()["choices"][0]["message"]["content"].startswith("echo:")


def test_admin_upload_errors(rag: RunningGateway) -> None:
    url = f"{rag.url}/admin/tenants/acme/documents"
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert (
        httpx.post(url, json={"documents": []}, headers={"Authorization": "Bearer nope"}).status_code == 401
    )
    bad = httpx.post(url, json={"documents": [{"name": "x.md"}]}, headers=auth)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "documents[0].content"
    assert (
        httpx.post(
            f"{rag.url}/admin/tenants/nobody/documents", json={"documents": []}, headers=auth
        ).status_code
        == 404
    )
    mixed = httpx.post(
        url,
        headers=auth,
        timeout=60,
        json={
            "documents": [
                {"name": "ok.md", "content": "# Bins\n\nBins are collected on Tuesdays."},
                {"name": "empty.txt", "content": ""},
                {"name": "tool.exe", "content_base64": "TVqQAAMAAAAEAAAA"},
            ]
        },
    )
    assert mixed.status_code == 207
    outcomes = {f["doc_id"]: f["outcome"] for f in mixed.json()["files"]}
    assert outcomes == {"ok.md": "added", "empty.txt": "error", "tool.exe": "skipped"}
    assert ask(rag, "Which day are the bins collected?").json()["citations"][0]["source"] == "ok.md"


def test_cli_ingest_is_incremental_and_sync_removes(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, content in DOCS.items():
        (corpus / name).write_text(content)
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"vector_store": {"path": str(tmp_path / "chroma")}}))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}

    def ingest(*args: str) -> dict:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "ingest",
                "--config",
                str(config),
                "--tenant",
                "acme",
                "--json",
                *args,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert result.returncode in (0, 1), result.stderr
        return json.loads(result.stdout)

    first = ingest(str(corpus))
    assert first["counts"] == {"added": 3} and first["chunks_embedded"] >= 3
    again = ingest(str(corpus))
    assert again["counts"] == {"unchanged": 3} and again["chunks_embedded"] == 0
    assert again["corpus_version"] == first["corpus_version"]
    (corpus / "hours.txt").write_text("The town hall is open every day from 9:00 to 12:00.\n")
    (corpus / "parking.md").unlink()
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    changed = ingest("--sync", str(corpus))
    outcomes = {f["doc_id"]: f["outcome"] for f in changed["files"]}
    assert outcomes == {
        "hours.txt": "updated",
        "zones.md": "unchanged",
        "parking.md": "deleted",
        "broken.pdf": "error",
    }
    assert changed["corpus_version"] > first["corpus_version"]


def test_conflicting_sources_are_grouped_and_flagged(rag: RunningGateway) -> None:
    docs = [
        {
            "name": "refunds-2022.md",
            "content": "---\ndate: 2022-03-01\nversion: '1.0'\n---\n# Refunds\n\n"
            "Annual plans are refunded in full if you ask within 14 days of purchase.",
        },
        {
            "name": "refunds-2024.md",
            "content": "---\ndate: 2024-05-01\nversion: '2.0'\n---\n# Refunds\n\n"
            "Annual plans are refunded in full if you ask within 30 days of purchase.",
        },
    ]
    upload = httpx.post(
        f"{rag.url}/admin/tenants/acme/documents",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"documents": docs},
        timeout=60,
    )
    assert upload.status_code == 200
    policy_file = rag.config_path.parent / "policies" / "acme.yaml"
    data = yaml.safe_load(policy_file.read_text())
    data["retrieval"] = retrieval_policy(prefer_newest_on_conflict=True)
    policy_file.write_text(yaml.safe_dump(data))
    import time

    time.sleep(1.2)  # hot reload
    response = ask(rag, "Within how many days are annual plans refunded?")
    citations = {c["source"]: c for c in response.json()["citations"]}
    old, new = citations["refunds-2022.md"], citations["refunds-2024.md"]
    assert old["conflict_group"] == new["conflict_group"]
    assert new["preferred"] is True and old["preferred"] is False
    assert old["date"] == "2022-03-01" and new["date"] == "2024-05-01"
    system = rag.upstream.requests()[-1]["body"]["messages"][0]["content"]
    assert "Conflicts with" in system and "disagree" in system
    assert f"Prefer [{new['id']}], the newest source." in system


def test_provider_embedding_model_through_the_upstream_config(
    tmp_path: Path, upstream: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """retrieval.embedding_model may name a provider embedding model from gateway.yaml."""
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    monkeypatch.setenv("TEST_ADMIN_KEY", ADMIN_KEY)
    config_path = write_gateway_files(
        tmp_path, upstream.base, retrieval={"enabled": True, "embedding_model": "embed-mock"}
    )
    # Priced, so that the query's embedding call shows in the request's cost.
    update_yaml(
        config_path,
        pricing={
            "gpt-mock": {"input_per_1k": 1.0, "output_per_1k": 2.0},
            "embed-mock": {"input_per_1k": 10.0, "output_per_1k": 0.0},
        },
    )
    acme = tmp_path / "policies" / "acme.yaml"
    data = yaml.safe_load(acme.read_text())
    data["retrieval"] = retrieval_policy(min_confidence=0.0)
    acme.write_text(yaml.safe_dump(data))
    server = ServerThread(create_app(load_config(config_path)))
    gateway = RunningGateway(server, config_path, upstream)
    try:
        upload = httpx.post(
            f"{gateway.url}/admin/tenants/acme/documents",
            timeout=60,
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            json={"documents": [{"name": n, "content": c} for n, c in DOCS.items()]},
        )
        assert upload.status_code == 200, upload.text
        question = "How much does a resident parking permit cost?"
        response = ask(gateway, question)
        assert response.json()["citations"][0]["source"] == "parking.md"
        paths = [r["path"] for r in upstream.requests()]
        assert paths.count("/v1/embeddings") >= 2  # the documents, then the query
        # The query's embedding is a paid call on acme's behalf: booked with the request.
        query_tokens = Pricing(load_config(config_path)).count_text("embed-mock", question)
        chat_nanos = 10 * 1_000_000 + 6 * 2_000_000  # the mock's usage at $1 / $2 per 1k tokens
        cost = round(float(response.headers["x-gateway-cost-usd"]) * 1e9)
        assert query_tokens > 0 and cost == chat_nanos + query_tokens * 10_000_000

        # The embedding provider fails: a clear 502 and no chat model call, not a 500.
        upstream.script("e", "status:500")
        chats = paths.count("/v1/chat/completions")
        failed = ask(gateway, "How much does a resident parking permit cost?")
        assert failed.status_code == 502, failed.text
        error = failed.json()["error"]
        assert error["code"] == "embedding_unavailable" and "embed-mock" in error["message"]
        assert UPSTREAM_SECRET not in failed.text
        assert [r["path"] for r in upstream.requests()].count("/v1/chat/completions") == chats
    finally:
        server.stop()


def test_llm_reranker_reorders_the_fused_candidates(rag: RunningGateway) -> None:
    question = "Where are resident parking permits issued and what are the town hall hours?"
    fused = [c["source"] for c in ask(rag, question, model="local-extractive").json()["citations"]]
    policy_file = rag.config_path.parent / "policies" / "acme.yaml"
    data = yaml.safe_load(policy_file.read_text())
    data["retrieval"] = retrieval_policy(rerank={"model": "backup", "candidates": 3}, top_k=2)
    policy_file.write_text(yaml.safe_dump(data))
    import time

    time.sleep(1.2)  # hot reload
    # The reranker (the mock, answering as model backup-1) puts the fused #2 first; the rest follow.
    rag.upstream.script("backup-1", "say:[2]")
    reranked = ask(rag, question, model="local-extractive")
    sources = [c["source"] for c in reranked.json()["citations"]]
    assert sources == [fused[1], fused[0]]
    prompt = rag.upstream.requests()[-1]["body"]["messages"][0]["content"]
    assert "Rank the passages" in prompt and "[1]" in prompt and "[3]" in prompt
