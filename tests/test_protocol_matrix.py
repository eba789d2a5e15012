"""Every stage times every protocol, JSON and streaming: the chain behaves the same whichever door a
request comes in by (chat completions, Responses, Anthropic Messages, legacy completions).

One gateway for the module: tenant `acme` has retrieval (with refusal), input and output
guardrails, the exact cache and priced accounting on; tenant `other` has a one-request rate limit.
Each protocol has an adapter that sends a question and reads the answer back the way its clients
do, so a case is written once and run through all of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
import yaml

from gateway.app import create_app
from gateway.config import load_config
from tests.conftest import ACME_KEY, UPSTREAM_SECRET, MockServer, RunningGateway, ServerThread

ADMIN_KEY = "sk-admin-matrix"
LIMITED_KEY = "sk-limited-matrix-0003"
DOCS = {
    "zones.md": "# Speed limits\n\n## Zone A\n\nThe speed limit in Zone A is 40 km/h on weekdays.\n\n"
    "## Zone B\n\nIn Zone B the limit is 25 km/h because of the school.\n",
    "hours.txt": "The town hall is open Monday to Friday from 8:00 to 16:00. "
    "It is closed on public holidays.\n",
}
OFF_TOPIC = "Which chess opening did the 1972 world champion prefer with the black pieces?"
CARD = "4111 1111 1111 1111"


@dataclass
class Answer:
    status: int
    headers: httpx.Headers
    text: str = ""
    citations: list[dict[str, Any]] | None = None
    error_type: str | None = None  # the protocol's own error type / code
    annotations: list[dict[str, Any]] = field(default_factory=list)
    finish: str | None = None


def _events(body: str) -> list[tuple[str | None, dict[str, Any]]]:
    found = []
    for block in body.split("\n\n"):
        lines = block.strip().splitlines()
        data = "\n".join(line[5:].strip() for line in lines if line.startswith("data:"))
        name = next((line[6:].strip() for line in lines if line.startswith("event:")), None)
        if data and data != "[DONE]":
            found.append((name, orjson.loads(data)))
    return found


class Protocol:
    name: str
    path: str

    def body(self, question: str, stream: bool) -> dict[str, Any]:
        raise NotImplementedError

    def headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def read_json(self, data: dict[str, Any], answer: Answer) -> None:
        raise NotImplementedError

    def read_stream(self, events: list[tuple[str | None, dict[str, Any]]], answer: Answer) -> None:
        raise NotImplementedError

    def error_type(self, data: dict[str, Any]) -> str | None:
        return (data.get("error") or {}).get("code")

    def ask(self, gw: RunningGateway, question: str, stream: bool, key: str = ACME_KEY) -> Answer:
        response = httpx.post(
            f"{gw.url}{self.path}", json=self.body(question, stream), headers=self.headers(key), timeout=60
        )
        answer = Answer(response.status_code, response.headers)
        if response.status_code != 200:
            answer.error_type = self.error_type(response.json())
        elif stream:
            assert response.headers["content-type"].startswith("text/event-stream")
            self.read_stream(_events(response.text), answer)
        else:
            self.read_json(response.json(), answer)
        return answer


class Chat(Protocol):
    name, path = "chat", "/v1/chat/completions"

    def body(self, question: str, stream: bool) -> dict[str, Any]:
        return {"model": "gpt-mock", "messages": [{"role": "user", "content": question}], "stream": stream}

    def read_json(self, data: dict[str, Any], answer: Answer) -> None:
        answer.text = data["choices"][0]["message"]["content"]
        answer.citations = data.get("citations")
        answer.finish = data["choices"][0]["finish_reason"]

    def read_stream(self, events: list[tuple[str | None, dict[str, Any]]], answer: Answer) -> None:
        for _, chunk in events:
            assert "error" not in chunk, chunk
            for choice in chunk.get("choices") or ():
                answer.text += choice["delta"].get("content") or ""
                answer.finish = choice.get("finish_reason") or answer.finish
            if "citations" in chunk:
                answer.citations = chunk["citations"]


class Responses(Protocol):
    name, path = "responses", "/v1/responses"

    def body(self, question: str, stream: bool) -> dict[str, Any]:
        return {"model": "gpt-mock", "input": question, "stream": stream}

    def read_json(self, data: dict[str, Any], answer: Answer) -> None:
        for item in data["output"]:
            for part in item.get("content") or ():
                if part["type"] == "output_text":
                    answer.text += part["text"]
                    answer.annotations += part["annotations"]
        answer.citations = data.get("citations")
        answer.finish = data["status"]

    def read_stream(self, events: list[tuple[str | None, dict[str, Any]]], answer: Answer) -> None:
        kinds = [event["type"] for _, event in events]
        assert kinds[-1] == "response.completed", kinds[-3:]
        for _, event in events:
            if event["type"] == "response.output_text.delta":
                answer.text += event["delta"]
        final: dict[str, Any] = events[-1][1]["response"]
        rebuilt = Answer(200, answer.headers)
        self.read_json(final, rebuilt)
        assert rebuilt.text == answer.text, "the final response must hold the streamed text"
        answer.citations, answer.annotations, answer.finish = (
            rebuilt.citations,
            rebuilt.annotations,
            rebuilt.finish,
        )


class Messages(Protocol):
    name, path = "messages", "/v1/messages"

    def body(self, question: str, stream: bool) -> dict[str, Any]:
        return {
            "model": "gpt-mock",
            "max_tokens": 200,
            "messages": [{"role": "user", "content": question}],
            "stream": stream,
        }

    def headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key, "anthropic-version": "2023-06-01"}

    def error_type(self, data: dict[str, Any]) -> str | None:
        assert data["type"] == "error", data
        return data["error"]["type"]

    def read_json(self, data: dict[str, Any], answer: Answer) -> None:
        answer.text = "".join(block["text"] for block in data["content"] if block["type"] == "text")
        answer.citations = data.get("citations")
        answer.finish = data["stop_reason"]

    def read_stream(self, events: list[tuple[str | None, dict[str, Any]]], answer: Answer) -> None:
        assert events[0][0] == "message_start" and events[-1][0] == "message_stop", [n for n, _ in events]
        for name, event in events:
            assert name == event["type"] and name != "error", event
            if name == "content_block_delta" and event["delta"]["type"] == "text_delta":
                answer.text += event["delta"]["text"]
            elif name == "message_delta":
                answer.finish = event["delta"].get("stop_reason")
            if "citations" in event and isinstance(event["citations"], list):
                answer.citations = event["citations"]
            elif isinstance(event.get("message"), dict) and "citations" in event["message"]:
                answer.citations = event["message"]["citations"]
            elif isinstance(event.get("delta"), dict) and "citations" in event["delta"]:
                answer.citations = event["delta"]["citations"]


class Completions(Protocol):
    name, path = "completions", "/v1/completions"

    def body(self, question: str, stream: bool) -> dict[str, Any]:
        return {"model": "gpt-mock", "prompt": question, "max_tokens": 200, "stream": stream}

    def read_json(self, data: dict[str, Any], answer: Answer) -> None:
        answer.text = data["choices"][0]["text"]
        answer.citations = data.get("citations")
        answer.finish = data["choices"][0]["finish_reason"]

    def read_stream(self, events: list[tuple[str | None, dict[str, Any]]], answer: Answer) -> None:
        for _, chunk in events:
            assert "error" not in chunk, chunk
            for choice in chunk.get("choices") or ():
                answer.text += choice.get("text") or ""
                answer.finish = choice.get("finish_reason") or answer.finish
            if "citations" in chunk:
                answer.citations = chunk["citations"]


PROTOCOLS = [Chat(), Responses(), Messages(), Completions()]
# What each protocol calls a rate limit, a bad key, a clean finish.
OPENAI_STYLE = ("chat", "responses", "completions")
RATE_LIMITED = {**dict.fromkeys(OPENAI_STYLE, "rate_limit_exceeded"), "messages": "rate_limit_error"}
UNAUTHORIZED = {**dict.fromkeys(OPENAI_STYLE, "invalid_api_key"), "messages": "authentication_error"}
FINISHED = {"chat": "stop", "responses": "completed", "completions": "stop", "messages": "end_turn"}

matrix = pytest.mark.parametrize(
    ("protocol", "stream"),
    [(p, s) for p in PROTOCOLS for s in (False, True)],
    ids=[f"{p.name}-{'stream' if s else 'json'}" for p in PROTOCOLS for s in (False, True)],
)


@pytest.fixture(scope="module")
def gw(upstream: MockServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    from gateway.policy import hash_key
    from tests.conftest import write_gateway_files

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    monkeypatch.setenv("TEST_ADMIN_KEY", ADMIN_KEY)
    root = tmp_path_factory.mktemp("matrix")
    path = write_gateway_files(root, upstream.base, retrieval={"enabled": True})
    config = yaml.safe_load(path.read_text())
    config["pricing"] = {"gpt-mock": {"input_per_1k": 0.5, "output_per_1k": 1.5}}
    config["telemetry"] = {"request_log": {"path": str(root / "requests.jsonl")}}
    path.write_text(yaml.safe_dump(config))
    policies = root / "policies"
    acme = yaml.safe_load((policies / "acme.yaml").read_text())
    acme["retrieval"] = {"enabled": True, "min_confidence": 0.2, "on_low_confidence": "refuse"}
    acme["input_guardrails"] = {"enabled": True, "pii": {"restore_in_answer": True}}
    acme["output_guardrails"] = {"enabled": True}
    acme["cache"] = {"enabled": True, "semantic": False}
    acme["log_content"] = False
    (policies / "acme.yaml").write_text(yaml.safe_dump(acme))
    limited = {
        "tenant": "limited",
        "api_keys": [hash_key(LIMITED_KEY)],
        "models": ["gpt-mock"],
        "rate_limit": {"enabled": True, "rpm": 1},
    }
    (policies / "limited.yaml").write_text(yaml.safe_dump(limited))
    server = ServerThread(create_app(load_config(path)))
    gateway = RunningGateway(server, path, upstream)
    loaded = httpx.post(
        f"{gateway.url}/admin/tenants/acme/documents",
        timeout=60,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"documents": [{"name": n, "content": c} for n, c in DOCS.items()]},
    )
    assert loaded.status_code == 200, loaded.text
    yield gateway
    server.stop()
    monkeypatch.undo()


def unique(question: str, protocol: Protocol, stream: bool) -> str:
    """A question of its own per case, so the cache never answers one case from another."""
    return f"{question} (case {protocol.name} {stream} {time.monotonic_ns()})"


def sent_messages(gw: RunningGateway) -> list[dict[str, Any]]:
    requests = gw.upstream.requests()
    assert requests, "the upstream was not called"
    return requests[-1]["body"]["messages"]


@matrix
def test_retrieval_injects_sources_and_cites_them(
    gw: RunningGateway, protocol: Protocol, stream: bool
) -> None:
    gw.upstream.script("mock-1", "say:Zone B is limited to 25 km/h [1].")
    answer = protocol.ask(gw, unique("What is the speed limit in Zone B?", protocol, stream), stream)
    assert answer.status == 200
    assert answer.text == "Zone B is limited to 25 km/h [1]."
    assert answer.finish == FINISHED[protocol.name]
    system = sent_messages(gw)[0]
    assert system["role"] == "system" and "[1] Source: zones.md" in system["content"]
    assert answer.citations is not None and answer.citations[0]["source"] == "zones.md"
    if protocol.name == "responses":
        assert answer.annotations and answer.annotations[0]["filename"] == "zones.md"
        assert answer.annotations[0]["type"] == "file_citation"
    assert float(answer.headers["x-gateway-cost-usd"]) > 0


@matrix
def test_low_confidence_is_refused_without_calling_a_model(
    gw: RunningGateway, protocol: Protocol, stream: bool
) -> None:
    answer = protocol.ask(gw, unique(OFF_TOPIC, protocol, stream), stream)
    assert answer.status == 200
    assert answer.headers["x-gateway-refused"] == "low_confidence"
    assert "could not find" in answer.text
    assert gw.upstream.requests() == []
    assert answer.headers["x-gateway-cost-usd"] == "0"


@matrix
def test_input_pii_is_redacted_upstream_and_restored(
    gw: RunningGateway, protocol: Protocol, stream: bool
) -> None:
    question = unique("When is the town hall open? Reply to jane.doe@example.com", protocol, stream)
    answer = protocol.ask(gw, question, stream)
    assert answer.status == 200
    sent = sent_messages(gw)[-1]["content"]
    assert "jane.doe@example.com" not in sent and "<EMAIL_1>" in sent
    if not stream:  # the mock streams canned words; its JSON answer echoes the prompt
        assert "jane.doe@example.com" in answer.text


@matrix
def test_output_secrets_are_redacted(gw: RunningGateway, protocol: Protocol, stream: bool) -> None:
    gw.upstream.script("mock-1", f"say:The town hall accepts card {CARD} at the desk.")
    answer = protocol.ask(gw, unique("When is the town hall open?", protocol, stream), stream)
    assert answer.status == 200
    assert CARD not in answer.text and "The town hall accepts" in answer.text


@matrix
def test_cache_replays_in_the_asking_protocol(gw: RunningGateway, protocol: Protocol, stream: bool) -> None:
    question = unique("When is the town hall open?", protocol, stream)
    first = protocol.ask(gw, question, stream)
    assert first.status == 200 and first.headers["x-gateway-cache"] == "miss"
    calls = len(gw.upstream.requests())
    again = poll(lambda: protocol.ask(gw, question, stream), lambda a: a.headers["x-gateway-cache"] == "hit")
    assert again.text == first.text and again.finish == first.finish
    assert len(gw.upstream.requests()) == calls


@pytest.mark.parametrize("protocol", PROTOCOLS[1:], ids=[p.name for p in PROTOCOLS[1:]])
def test_an_answer_cached_through_chat_serves_every_other_protocol(
    gw: RunningGateway, protocol: Protocol
) -> None:
    question = unique("When is the town hall open?", protocol, False)
    first = PROTOCOLS[0].ask(gw, question, False)
    assert first.status == 200
    again = poll(lambda: protocol.ask(gw, question, False), lambda a: a.headers["x-gateway-cache"] == "hit")
    assert again.text == first.text


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=[p.name for p in PROTOCOLS])
def test_limits_and_auth_answer_in_the_protocols_own_envelope(gw: RunningGateway, protocol: Protocol) -> None:
    wrong = protocol.ask(gw, "hello", False, key="sk-not-a-key")
    assert wrong.status == 401 and wrong.error_type == UNAUTHORIZED[protocol.name]
    answers = [protocol.ask(gw, "hello", False, key=LIMITED_KEY) for _ in range(2)]
    limited = [a for a in answers if a.status == 429]
    assert limited, [a.status for a in answers]
    assert limited[0].error_type == RATE_LIMITED[protocol.name]
    assert int(limited[0].headers["retry-after"]) >= 1


@matrix
def test_request_log_records_every_protocol_alike(
    gw: RunningGateway, protocol: Protocol, stream: bool
) -> None:
    gw.upstream.script("mock-1", "say:Zone B is limited to 25 km/h [1].")
    question = unique("What is the speed limit in Zone B?", protocol, stream)
    answer = protocol.ask(gw, question, stream)
    assert answer.status == 200
    request_id = answer.headers["x-request-id"]
    log_path = gw.config_path.parent / "requests.jsonl"
    deadline = time.monotonic() + 5
    entry = None
    while entry is None and time.monotonic() < deadline:
        lines = log_path.read_text().splitlines() if log_path.exists() else []
        entry = next((orjson.loads(line) for line in lines if request_id in line), None)
        if entry is None:
            time.sleep(0.05)
    assert entry is not None, "no request-log line for the request"
    assert entry["endpoint"] == protocol.name and entry["stream"] is stream
    assert entry["status"] == 200 and entry["error"] is None  # a completed stream is not a 499
    assert entry["usage"]["total_tokens"] > 0 and entry["cost_usd"] > 0, entry
    assert entry["retrieval"]["hits"] and entry["retrieval"]["query"] is None
    assert "Zone B" not in orjson.dumps(entry).decode()  # log_content: false keeps the question out


def poll(call: Callable[[], Answer], done: Callable[[Answer], bool], timeout_s: float = 5.0) -> Answer:
    deadline = time.monotonic() + timeout_s
    while True:
        answer = call()
        if done(answer) or time.monotonic() > deadline:
            assert done(answer), dict(answer.headers)
            return answer
        time.sleep(0.05)
