"""The Responses API through the gateway: the openai SDK unmodified, translated for chat upstreams,
relayed to native ones, stored per tenant (memory or Redis), validated against OpenAI's contract."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import redis
import yaml

from gateway.app import create_app
from gateway.config import load_config
from tests.conftest import ACME_KEY, OTHER_KEY, UPSTREAM_SECRET, MockServer, RunningGateway, ServerThread
from tests.contract import check, check_stream_event

REDIS_URL = "redis://127.0.0.1:6379/15"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
NATIVE_MODEL = {
    "name": "resp-native",
    "deployments": [
        {
            "provider": "openai_compatible",
            "model": "native-1",
            "api_base": "{v1}",
            "api_key_env": "MOCK_UPSTREAM_KEY",
            "apis": ["chat", "responses"],
        }
    ],
}


def sdk(url: str, key: str = ACME_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def post(url: str, body: dict[str, Any], key: str = ACME_KEY) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/responses", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def sse_events(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        data = [line[5:].strip() for line in lines if line.startswith("data:")]
        name = [line[6:].strip() for line in lines if line.startswith("event:")]
        if data:
            event = orjson.loads("\n".join(data))
            assert name == [event["type"]], f"the SSE event name must be the event's type: {block!r}"
            events.append(event)
    return events


def configure(
    tmp_path: Path, upstream: MockServer, state: str = "memory", acme_extra: dict[str, Any] | None = None
) -> Path:
    from tests.conftest import write_gateway_files

    native = orjson.loads(orjson.dumps(NATIVE_MODEL).replace(b"{v1}", f"{upstream.base}/v1".encode()))
    path = write_gateway_files(tmp_path, upstream.base, extra_models=[native])
    config = yaml.safe_load(path.read_text())
    config["state"] = state
    path.write_text(yaml.safe_dump(config))
    policy_path = tmp_path / "policies" / "acme.yaml"
    policy = yaml.safe_load(policy_path.read_text())
    policy["models"].append("resp-native")
    policy.update(acme_extra or {})
    policy_path.write_text(yaml.safe_dump(policy))
    return path


@pytest.fixture
def gw(tmp_path: Path, upstream: MockServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningGateway]:
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    path = configure(tmp_path, upstream)
    server = ServerThread(create_app(load_config(path)))
    yield RunningGateway(server, path, upstream)
    server.stop()


# -- translated for a chat upstream ----------------------------------------------------------------


def test_create_translates_to_chat_and_answers_a_valid_response(gw: RunningGateway) -> None:
    answer = post(
        gw.url,
        {
            "model": "gpt-mock",
            "input": "What is RAG?",
            "instructions": "Answer briefly.",
            "max_output_tokens": 50,
            "temperature": 0.3,
            "metadata": {"ticket": "42"},
        },
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    check(body, "Response")
    assert body["model"] == "gpt-mock" and body["status"] == "completed"
    assert body["metadata"] == {"ticket": "42"} and body["instructions"] == "Answer briefly."
    message = body["output"][0]
    assert message["type"] == "message" and message["content"][0]["text"] == "echo: What is RAG?"
    assert body["usage"]["input_tokens"] == 10 and body["usage"]["output_tokens"] == 6
    assert body["usage"]["total_tokens"] == 16
    sent = gw.upstream.requests()[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is RAG?"},
    ]
    assert sent["body"]["max_tokens"] == 50 and sent["body"]["temperature"] == 0.3
    assert "metadata" not in sent["body"] and "input" not in sent["body"]


def test_sdk_output_text_and_stream_events_in_order(gw: RunningGateway) -> None:
    client = sdk(gw.url)
    assert client.responses.create(model="gpt-mock", input="ping").output_text == "echo: ping"
    with client.responses.stream(model="gpt-mock", input="stream me") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert final.output_text == "Hello from the mock upstream."
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert kinds.count("response.output_text.delta") == 6
    assert final.usage is not None and final.usage.output_tokens == 6


def test_raw_stream_events_are_numbered_and_each_matches_the_contract(gw: RunningGateway) -> None:
    answer = post(gw.url, {"model": "gpt-mock", "input": "hi", "stream": True})
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = sse_events(answer.text)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        check_stream_event(event)
    final = events[-1]["response"]
    check(final, "Response")
    assert final["output"][0]["content"][0]["text"] == "Hello from the mock upstream."


def test_function_tools_round_trip_with_previous_response_id(gw: RunningGateway) -> None:
    client = sdk(gw.url)
    gw.upstream.script("mock-1", "tool_call")
    first = client.responses.create(model="gpt-mock", input="Weather in Paris?", tools=[WEATHER_TOOL])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert orjson.loads(calls[0].arguments) == {"city": "Paris"} and calls[0].call_id == "call_1"
    sent_tools = gw.upstream.requests()[-1]["body"]["tools"]
    assert sent_tools[0]["function"]["name"] == "get_weather"
    assert sent_tools[0]["function"]["parameters"]["required"] == ["city"]

    second = client.responses.create(
        model="gpt-mock",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": "call_1", "output": '{"temp_c": 21}'}],
        tools=[WEATHER_TOOL],
    )
    assert second.previous_response_id == first.id and second.status == "completed"
    messages = gw.upstream.requests()[-1]["body"]["messages"]
    assert messages[0] == {"role": "user", "content": "Weather in Paris?"}
    assert messages[1]["role"] == "assistant" and messages[1]["tool_calls"][0]["id"] == "call_1"
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'}


def test_stored_responses_get_delete_input_items_and_tenant_isolation(gw: RunningGateway) -> None:
    client = sdk(gw.url)
    created = client.responses.create(model="gpt-mock", input="remember me")
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == "echo: remember me"
    items = client.responses.input_items.list(created.id)
    assert [i.content[0].text for i in items.data] == ["remember me"]  # type: ignore[union-attr]
    with pytest.raises(openai.NotFoundError):
        sdk(gw.url, OTHER_KEY).responses.retrieve(created.id)
    with pytest.raises(openai.BadRequestError) as stolen:
        sdk(gw.url, OTHER_KEY).responses.create(
            model="other-only", input="x", previous_response_id=created.id
        )
    assert stolen.value.code == "previous_response_not_found"
    deleted = httpx.delete(
        f"{gw.url}/v1/responses/{created.id}", headers={"Authorization": f"Bearer {ACME_KEY}"}
    )
    assert deleted.json() == {"id": created.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_store_false_keeps_nothing(gw: RunningGateway) -> None:
    client = sdk(gw.url)
    unstored = client.responses.create(model="gpt-mock", input="forget me", store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.create(model="gpt-mock", input="more", previous_response_id=unstored.id)
    assert error.value.param == "previous_response_id"


def test_json_schema_format_becomes_response_format(gw: RunningGateway) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    sdk(gw.url).responses.create(
        model="gpt-mock",
        input="json please",
        text={"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}},
    )
    sent = gw.upstream.requests()[-1]["body"]
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema, "strict": True},
    }


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"model": "gpt-mock"}, 400, "input", "missing_required_parameter"),
        ({"model": "gpt-mock", "input": 5}, 400, "input", "invalid_type"),
        ({"input": "x"}, 400, "model", "missing_required_parameter"),
        (
            {"model": "gpt-mock", "input": "x", "tools": [{"type": "web_search"}]},
            400,
            "tools[0].type",
            "unsupported_parameter",
        ),
        ({"model": "gpt-mock", "input": "x", "background": True}, 400, "background", "unsupported_parameter"),
        ({"model": "gpt-mock", "input": [{"role": "robot", "content": "x"}]}, 400, "input[0].role",
         "invalid_value"),
        ({"model": "gpt-mock", "input": "x", "max_output_tokens": 0}, 400, "max_output_tokens",
         "invalid_value"),
        ({"model": "gpt-mock", "input": "x", "previous_response_id": "resp_nope"}, 400,
         "previous_response_id", "previous_response_not_found"),
        ({"model": "gpt-mokc", "input": "x"}, 404, "model", "model_not_found"),
    ],
)  # fmt: skip
def test_bad_input_gets_openai_errors_naming_the_field(
    gw: RunningGateway, body: dict[str, Any], status: int, param: str, code: str
) -> None:
    answer = post(gw.url, body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["code"] == code, error
    assert error["message"]


def test_malformed_json_and_wrong_key(gw: RunningGateway) -> None:
    answer = httpx.post(
        f"{gw.url}/v1/responses", content=b"{not json", headers={"Authorization": f"Bearer {ACME_KEY}"}
    )
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_json"
    with pytest.raises(openai.AuthenticationError):
        sdk(gw.url, "sk-wrong").responses.create(model="gpt-mock", input="x")


def test_a_failure_mid_stream_is_raised_by_the_sdk(gw: RunningGateway) -> None:
    gw.upstream.script("mock-1", "stream_break")
    seen: list[str] = []
    with pytest.raises(openai.APIError), sdk(gw.url).responses.stream(model="gpt-mock", input="x") as stream:
        for event in stream:
            seen.append(event.type)
    assert "response.failed" in seen
    gw.upstream.script("mock-1", "stream_break")
    raw = post(gw.url, {"model": "gpt-mock", "input": "x", "stream": True})
    kinds = [e["type"] for e in sse_events(raw.text)]
    assert kinds[-2:] == ["response.failed", "error"] and "response.completed" not in kinds


# -- relayed to a native Responses upstream --------------------------------------------------------


def test_native_upstream_gets_the_body_untouched_but_for_model_store_and_history(gw: RunningGateway) -> None:
    client = sdk(gw.url)
    first = post(
        gw.url,
        {
            "model": "resp-native",
            "input": "hello native",
            "tools": [{"type": "web_search"}],
            "some_future_field": {"x": 1},
        },
    )
    assert first.status_code == 200, first.text
    sent = gw.upstream.requests()[-1]
    assert sent["path"] == "/v1/responses"
    assert sent["body"]["model"] == "native-1" and sent["body"]["store"] is False
    assert sent["body"]["tools"] == [{"type": "web_search"}] and sent["body"]["some_future_field"] == {"x": 1}
    assert first.json()["output"][0]["content"][0]["text"] == "native: hello native"

    second = client.responses.create(
        model="resp-native", input="and again", previous_response_id=first.json()["id"]
    )
    assert second.output_text == "native: and again"
    sent = gw.upstream.requests()[-1]["body"]
    assert "previous_response_id" not in sent
    texts = [item["content"][0]["text"] for item in sent["input"]]
    assert texts == ["hello native", "native: hello native", "and again"]
    assert all("id" not in item for item in sent["input"])


def test_native_stream_is_relayed_and_stored(gw: RunningGateway) -> None:
    client = sdk(gw.url)
    with client.responses.stream(model="resp-native", input="stream native") as stream:
        final = stream.get_final_response()
    assert final.output_text == "native: stream native"
    assert client.responses.retrieve(final.id).output_text == "native: stream native"
    assert final.usage is not None and final.usage.input_tokens == 12


def test_chat_only_upstream_refuses_what_a_native_one_relays(gw: RunningGateway) -> None:
    body = {"model": "gpt-mock", "input": "x", "truncation": "auto"}
    refused = post(gw.url, body)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "truncation"
    relayed = post(gw.url, {**body, "model": "resp-native"})
    assert relayed.status_code == 200
    assert gw.upstream.requests()[-1]["body"]["truncation"] == "auto"


# -- shared by replicas through Redis ------------------------------------------------------------


def _redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL).ping())
    except redis.RedisError:
        return False


def test_replicas_share_stored_responses_through_redis_with_the_policy_ttl(
    tmp_path: Path, upstream: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not _redis_up():
        pytest.skip("no Redis on 127.0.0.1:6379")
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    path = configure(tmp_path, upstream, state=REDIS_URL, acme_extra={"responses": {"store_ttl_s": 600}})
    first, second = ServerThread(create_app(load_config(path))), ServerThread(create_app(load_config(path)))
    try:
        created = sdk(first.url).responses.create(model="gpt-mock", input="shared")
        assert sdk(second.url).responses.retrieve(created.id).output_text == "echo: shared"
        follow = sdk(second.url).responses.create(
            model="gpt-mock", input="next", previous_response_id=created.id
        )
        assert follow.status == "completed"
        assert [m["content"] for m in upstream.requests()[-1]["body"]["messages"]] == [
            "shared",
            "echo: shared",
            "next",
        ]
        ttl = redis.Redis.from_url(REDIS_URL).ttl(f"rg:rec:resp:{{acme}}:{created.id}")
        assert 590 <= ttl <= 600
    finally:
        first.stop()
        second.stop()
