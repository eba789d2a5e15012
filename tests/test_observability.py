"""Traces to a real OTLP/HTTP receiver, the request log, replay, and /metrics."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.app import create_app
from gateway.config import load_config
from tests.conftest import (
    ACME_KEY,
    UPSTREAM_SECRET,
    MockServer,
    RunningGateway,
    ServerThread,
    free_port,
    write_gateway_files,
)

CHAT = "/v1/chat/completions"
ADMIN_KEY = "sk-admin-obs"


class OTLPReceiver:
    """A minimal OTLP/HTTP trace collector: decodes every export request it receives."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    for scope in resource_spans.scope_spans:
                        for span in scope.spans:
                            receiver.spans.append(_decode(span, service))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, predicate, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.spans):
                return self.spans
            time.sleep(0.1)
        raise AssertionError(f"spans not received: {[s['name'] for s in self.spans]}")


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _decode(span: Any, service: dict[str, str]) -> dict[str, Any]:
    return {
        "name": span.name,
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent": span.parent_span_id.hex(),
        "kind": span.kind,
        "duration_s": (span.end_time_unix_nano - span.start_time_unix_nano) / 1e9,
        "attributes": {a.key: _value(a.value) for a in span.attributes},
        "service": service.get("service.name"),
    }


@pytest.fixture
def traced(tmp_path: Path, upstream: MockServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:
    receiver = OTLPReceiver()
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    monkeypatch.setenv("TEST_ADMIN_KEY", ADMIN_KEY)
    config_path = write_gateway_files(tmp_path, upstream.base, retrieval={"enabled": True})
    config = yaml.safe_load(config_path.read_text())
    config["telemetry"] = {
        "otlp_endpoint": f"http://127.0.0.1:{receiver.port}",
        "otlp_protocol": "http/protobuf",
        "service_name": "rag-gateway-test",
        "request_log": {"path": str(tmp_path / "logs" / "requests.jsonl")},
    }
    config_path.write_text(yaml.safe_dump(config))
    acme = tmp_path / "policies" / "acme.yaml"
    policy = yaml.safe_load(acme.read_text())
    policy["retrieval"] = {"enabled": True, "min_confidence": 0.2}
    acme.write_text(yaml.safe_dump(policy))
    server = ServerThread(create_app(load_config(config_path)))
    gateway = RunningGateway(server, config_path, upstream)
    httpx.post(
        f"{gateway.url}/admin/tenants/acme/documents",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={
            "documents": [
                {
                    "name": "zones.md",
                    "content": "# Zones\n\nThe speed limit in Zone B is 25 km/h near the school.",
                }
            ]
        },
        timeout=60,
    ).raise_for_status()
    yield gateway, receiver, tmp_path
    server.stop()
    receiver.server.shutdown()


QUESTION = "Speed limit in Zone B?"


def log_entry(log_file: Path, request_id: str, timeout_s: float = 5) -> dict[str, Any]:
    """The request log's line for a request, once the log writer has written it."""
    deadline = time.monotonic() + timeout_s
    while request_id not in (log_file.read_text() if log_file.exists() else ""):
        assert time.monotonic() < deadline, f"no request-log line for {request_id}"
        time.sleep(0.1)
    return next(json.loads(line) for line in log_file.read_text().splitlines() if request_id in line)


def ask(gateway: RunningGateway, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}{CHAT}",
        timeout=60,
        headers={"Authorization": f"Bearer {ACME_KEY}", **(headers or {})},
        json={
            "model": "gpt-mock",
            "messages": [{"role": "user", "content": QUESTION}],
            "temperature": 0.3,
            "max_tokens": 50,
        },
    )


def test_span_tree_continues_client_trace_and_reaches_the_upstream(traced) -> None:
    gateway, receiver, _ = traced
    gateway.upstream.script("mock-1", "status:500")  # one retry: two CLIENT spans
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent_id = "00f067aa0ba902b7"
    response = ask(gateway, {"traceparent": f"00-{trace_id}-{parent_id}-01"})
    assert response.status_code == 200
    spans = receiver.wait_for(
        lambda spans: (
            sum(s["name"] == "chat mock-1" for s in spans) >= 2 and any(s["kind"] == 2 for s in spans)
        )
    )
    ours = [s for s in spans if s["trace_id"] == trace_id]
    by_name: dict[str, list[dict]] = {}
    for span in ours:
        by_name.setdefault(span["name"], []).append(span)
    server = by_name["POST /v1/chat/completions"][0]
    assert server["parent"] == parent_id and server["kind"] == 2  # SERVER, continuing the client's trace
    assert server["attributes"]["gateway.request_id"] == response.headers["x-request-id"]
    assert server["service"] == "rag-gateway-test"
    # Stages nest in chain order: admission (always on, for accounting) wraps retrieval.
    admission = by_name["gateway.admission"][0]
    assert admission["parent"] == server["span_id"]
    retrieval_stage = by_name["gateway.retrieval"][0]
    assert retrieval_stage["parent"] == admission["span_id"]
    assert retrieval_stage["attributes"]["gateway.retrieval.action"] == "retrieved"
    refusal = by_name["gateway.refusal"][0]
    assert refusal["attributes"]["gateway.refusal.action"] == "allow"
    search = next(s for name, group in by_name.items() if name.startswith("retrieval ") for s in group)
    assert search["attributes"]["gen_ai.retrieval.top_k"] == 5
    documents = json.loads(search["attributes"]["gen_ai.retrieval.documents"])
    assert documents[0]["id"] == "zones.md#0" and documents[0]["rank"] == 1
    attempts = by_name["chat mock-1"]
    assert len(attempts) == 2 and {a["kind"] for a in attempts} == {3}  # CLIENT
    ok = next(a for a in attempts if "error.type" not in a["attributes"])
    attrs = ok["attributes"]
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == "mock-1"
    assert attrs["gen_ai.usage.input_tokens"] == 10 and attrs["gen_ai.usage.output_tokens"] == 6
    assert attrs["gen_ai.response.finish_reasons"] == ["stop"] and attrs["gen_ai.request.temperature"] == 0.3
    assert attrs["gen_ai.request.max_tokens"] == 50 and attrs["server.address"] == "127.0.0.1"
    assert all(s["attributes"].get("gateway.tenant") == "acme" for s in ours if s["name"] != server["name"])
    assert server["attributes"]["gateway.tenant"] == "acme"
    # Prompt text is off by default.
    assert not any("gen_ai.input.messages" in s["attributes"] for s in ours)
    # The upstream got the trace context of its CLIENT span.
    sent = gateway.upstream.requests()[-1]["headers"]["traceparent"]
    assert sent.split("-")[1] == trace_id and sent.split("-")[2] == ok["span_id"]


def test_a_stream_is_traced_logged_and_counted_when_it_ends(traced) -> None:
    gateway, receiver, tmp_path = traced
    gateway.upstream.script("mock-1", "slowstream:40")  # each of 6 chunks 40 ms apart
    started = time.perf_counter()
    chunks = []
    with httpx.stream(
        "POST",
        f"{gateway.url}{CHAT}",
        timeout=60,
        headers={"Authorization": f"Bearer {ACME_KEY}"},
        json={"model": "gpt-mock", "messages": [{"role": "user", "content": QUESTION}], "stream": True},
    ) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        chunks = [line for line in response.iter_lines() if line.startswith("data: {")]
    streamed_s = time.perf_counter() - started
    assert streamed_s >= 0.2
    # The gateway asked the upstream for usage; this client did not, so it gets no usage chunk.
    assert gateway.upstream.requests()[-1]["body"]["stream_options"] == {"include_usage": True}
    assert not any(json.loads(c[6:]).get("usage") for c in chunks)
    spans = receiver.wait_for(
        lambda spans: any(
            s["name"] == "chat mock-1" and s["attributes"].get("gateway.streaming") for s in spans
        )
    )
    client = next(s for s in spans if s["name"] == "chat mock-1")
    attrs = client["attributes"]
    # The CLIENT span lasts until the last chunk and carries what the stream reported.
    assert client["duration_s"] >= 0.2
    assert attrs["gen_ai.usage.input_tokens"] == 10 and attrs["gen_ai.usage.output_tokens"] == 6
    assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
    assert attrs["gen_ai.response.id"] == "chatcmpl-mock" and attrs["gen_ai.response.model"] == "mock-1"
    log_file = tmp_path / "logs" / "requests.jsonl"
    entry = log_entry(log_file, request_id)
    assert entry["status"] == 200 and entry["error"] is None  # completed, not "client disconnected"
    # The gateway's own time, not the 0.2 s spent waiting for the upstream's chunks.
    assert entry["overhead_ms"] < 150
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert (
        'rag_gateway_requests_total{endpoint="chat",model="gpt-mock",status="200",tenant="acme"} 1.0'
        in metrics
    )
    assert 'status="499"' not in metrics
    assert (
        'gen_ai_server_time_to_first_token_seconds_count{gen_ai_operation_name="chat",'
        'gen_ai_request_model="gpt-mock"} 1.0' in metrics
    )


def test_request_log_line_and_replay(traced) -> None:
    gateway, _, tmp_path = traced
    response = ask(gateway)
    request_id = response.headers["x-request-id"]
    log_file = tmp_path / "logs" / "requests.jsonl"
    entry = log_entry(log_file, request_id)
    assert entry["tenant"] == "acme" and entry["model"] == "gpt-mock" and entry["status"] == 200
    assert len(entry["trace_id"]) == 32 and entry["usage"]["total_tokens"] == 16
    assert entry["retrieval"]["hits"][0]["chunk_id"] == "zones.md#0"
    assert set(entry["stage_ms"]) == {"admission", "retrieval", "refusal"}
    assert entry["attempts"][0]["outcome"] == "ok" and entry["retries"] == 0
    assert "request" not in entry and "response" not in entry  # content is off by default
    text = log_file.read_text()
    assert UPSTREAM_SECRET not in text and ACME_KEY not in text
    assert QUESTION not in text and entry["retrieval"]["query"] is None  # no content, not even the query

    def replay(rid: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "replay", rid, "--config", str(gateway.config_path)],
            capture_output=True,
            text=True,
            env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
            timeout=120,
        )

    refused = replay(request_id)
    assert refused.returncode == 2 and "log_content: true" in refused.stderr
    # With content logging allowed, the same request can be replayed.
    acme = tmp_path / "policies" / "acme.yaml"
    policy = yaml.safe_load(acme.read_text())
    acme.write_text(yaml.safe_dump({**policy, "log_content": True}))
    deadline = time.monotonic() + 10
    while True:
        response = ask(gateway)
        rid = response.headers["x-request-id"]
        while rid not in log_file.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        line = next(json.loads(x) for x in log_file.read_text().splitlines() if rid in x)
        if line["retrieval"]["query"] is not None:
            break
        assert time.monotonic() < deadline, "the policy edit was not picked up"
        time.sleep(0.2)
    result = replay(rid)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "identical: the same 1 chunks in the same order" in result.stdout


def test_metrics_endpoint(traced) -> None:
    gateway, _, _ = traced
    ask(gateway)
    httpx.post(f"{gateway.url}{CHAT}", json={"model": "gpt-mock"}, headers={"Authorization": "Bearer nope"})
    text = httpx.get(f"{gateway.url}/metrics").text
    assert (
        'rag_gateway_requests_total{endpoint="chat",model="gpt-mock",status="200",tenant="acme"} 1.0' in text
    )
    assert 'rag_gateway_requests_total{endpoint="chat",model="",status="401",tenant=""} 1.0' in text
    assert (
        'gen_ai_client_token_usage_count{gen_ai_operation_name="chat",gen_ai_request_model="gpt-mock",'
        'gen_ai_token_type="input"} 1.0' in text
    )
    assert "gen_ai_client_operation_duration_seconds_bucket" in text
    assert 'rag_gateway_stage_duration_seconds_count{stage="retrieval"} 1.0' in text


def test_dead_collector_never_fails_or_slows_requests(
    tmp_path: Path, upstream: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    config_path = write_gateway_files(tmp_path, upstream.base)
    config = yaml.safe_load(config_path.read_text())
    config["telemetry"] = {
        "otlp_endpoint": f"http://127.0.0.1:{free_port()}",
        "otlp_protocol": "grpc",
        "request_log": {"enabled": False},
    }
    config_path.write_text(yaml.safe_dump(config))
    server = ServerThread(create_app(load_config(config_path)))
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ACME_KEY}"}) as client:
            started = time.perf_counter()
            for _ in range(50):
                response = client.post(
                    CHAT, json={"model": "gpt-mock", "messages": [{"role": "user", "content": "x"}]}
                )
                assert response.status_code == 200
            assert (time.perf_counter() - started) / 50 < 0.1
    finally:
        server.stop()
