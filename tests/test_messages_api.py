"""Anthropic's Messages API through the gateway: the anthropic SDK unmodified, translated for chat
upstreams, relayed to Anthropic deployments, errors in Anthropic's envelope; and chat clients
reaching an Anthropic deployment through the translation the other way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
import yaml
from anthropic.types import Message

from gateway.app import create_app
from gateway.config import load_config
from tests.conftest import ACME_KEY, UPSTREAM_SECRET, MockServer, RunningGateway, ServerThread

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def claude(url: str, key: str = ACME_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)


def post(url: str, body: dict[str, Any], key: str = ACME_KEY, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/messages",
        json=body,
        headers={"x-api-key": key, "anthropic-version": "2023-06-01", **headers},
        timeout=30,
    )


def named_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        data = [line[5:].strip() for line in lines if line.startswith("data:")]
        name = [line[6:].strip() for line in lines if line.startswith("event:")]
        if data:
            event = orjson.loads("\n".join(data))
            assert name == [event["type"]], f"the SSE event name must be the event's type: {block!r}"
            events.append((name[0], event))
    return events


@pytest.fixture
def gw(tmp_path: Path, upstream: MockServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningGateway]:
    from tests.conftest import write_gateway_files

    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    claude_model = {
        "name": "claude-native",
        "deployments": [
            {
                "provider": "anthropic",
                "model": "claude-up-1",
                "api_base": upstream.base,
                "api_key_env": "MOCK_UPSTREAM_KEY",
            }
        ],
    }
    path = write_gateway_files(tmp_path, upstream.base, extra_models=[claude_model])
    config = yaml.safe_load(path.read_text())
    config["pricing"] = {"claude-native": {"input_per_1k": 3.0, "output_per_1k": 15.0}}
    path.write_text(yaml.safe_dump(config))
    policy_path = tmp_path / "policies" / "acme.yaml"
    policy = yaml.safe_load(policy_path.read_text())
    policy["models"].append("claude-native")
    policy_path.write_text(yaml.safe_dump(policy))
    server = ServerThread(create_app(load_config(path)))
    yield RunningGateway(server, path, upstream)
    server.stop()


# -- translated for a chat upstream ----------------------------------------------------------------


def test_sdk_create_is_translated_to_chat_and_answers_a_valid_message(gw: RunningGateway) -> None:
    message = claude(gw.url).messages.create(
        model="gpt-mock",
        max_tokens=64,
        system=[{"type": "text", "text": "Answer briefly."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "What is RAG?"}]}],
        stop_sequences=["END"],
        output_config={"effort": "low"},
        thinking={"type": "adaptive"},
        extra_body={"temperature": 0.2},  # older SDKs send it; the API still takes it
        metadata={"user_id": "u-7"},
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text == "echo: What is RAG?"
    assert message.stop_reason == "end_turn" and message.model == "gpt-mock"
    assert message.usage.input_tokens == 10 and message.usage.output_tokens == 6
    sent = gw.upstream.requests()[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is RAG?"},
    ]
    assert sent["body"]["max_tokens"] == 64 and sent["body"]["stop"] == ["END"]
    assert sent["body"]["user"] == "u-7" and sent["body"]["temperature"] == 0.2
    assert sent["body"]["reasoning_effort"] == "low" and "thinking" not in sent["body"]


def test_output_config_json_schema_becomes_response_format(gw: RunningGateway) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    claude(gw.url).messages.create(
        model="gpt-mock",
        max_tokens=20,
        messages=[{"role": "user", "content": "JSON please"}],
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    sent = gw.upstream.requests()[-1]["body"]
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }


def test_raw_json_validates_against_the_sdk_types(gw: RunningGateway) -> None:
    answer = post(
        gw.url, {"model": "gpt-mock", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    Message.model_validate(body)  # strict: every required field, the right literal types
    assert body["id"].startswith("msg_") and body["stop_sequence"] is None
    assert set(body["usage"]) >= {"input_tokens", "output_tokens"}


def test_sdk_stream_gives_text_and_a_final_message(gw: RunningGateway) -> None:
    with claude(gw.url).messages.stream(
        model="gpt-mock", max_tokens=64, messages=[{"role": "user", "content": "Say hello"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from the mock upstream."
    assert final.content[0].text == text and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 6


def test_stream_events_are_in_anthropics_order(gw: RunningGateway) -> None:
    body = {
        "model": "gpt-mock",
        "max_tokens": 30,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    answer = post(gw.url, body)
    assert answer.headers["content-type"].startswith("text/event-stream")
    names = [name for name, _ in named_events(answer.text)]
    assert names[:2] == ["message_start", "ping"]
    assert names[2] == "content_block_start" and names[-3:] == [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert set(names[3:-3]) == {"content_block_delta"}


def test_tools_round_trip_as_tool_use_and_tool_result(gw: RunningGateway) -> None:
    client = claude(gw.url)
    gw.upstream.script("mock-1", "tool_call")
    first = client.messages.create(
        model="gpt-mock",
        max_tokens=64,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    assert first.stop_reason == "tool_use"
    use = first.content[-1]
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}
    sent = gw.upstream.requests()[-1]["body"]
    assert sent["tools"][0]["function"]["parameters"] == WEATHER_TOOL["input_schema"]
    assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False

    second = client.messages.create(
        model="gpt-mock",
        max_tokens=64,
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": use.id, "content": "18 C, sunny"},
                    {"type": "text", "text": "Thanks. Summarise it."},
                ],
            },
        ],
    )
    assert second.stop_reason == "end_turn"
    sent = gw.upstream.requests()[-1]["body"]["messages"]
    assert sent[1]["role"] == "assistant" and sent[1]["tool_calls"][0]["id"] == use.id
    assert orjson.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert sent[2] == {"role": "tool", "tool_call_id": use.id, "content": "18 C, sunny"}
    assert sent[3] == {"role": "user", "content": "Thanks. Summarise it."}


def test_streamed_tool_call_is_a_tool_use_block_with_json_deltas(gw: RunningGateway) -> None:
    gw.upstream.script("mock-1", "tool_call")
    with claude(gw.url).messages.stream(
        model="gpt-mock",
        max_tokens=64,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "Paris?"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[-1].type == "tool_use" and final.content[-1].input == {"city": "Paris"}


def test_images_become_image_parts(gw: RunningGateway) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    answer = post(
        gw.url,
        {
            "model": "gpt-mock",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}],
        },
    )
    assert answer.status_code == 200, answer.text
    parts = gw.upstream.requests()[-1]["body"]["messages"][0]["content"]
    assert parts[0] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "max_tokens", "max_tokens: Field required"),
        ({"max_tokens": -1, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens", "between 0"),
        ({"max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens", "warming"),
        (
            {
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
                "output_config": {"effort": "max"},
            },
            "output_config.effort",
            "effort 'max'",
        ),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "speed": "fast"},
            "speed",
            "speed",
        ),
        ({"max_tokens": 5}, "messages", "messages: Field required"),
        ({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role", "'system'"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": 3}]}, "messages.0.content", "string"),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "temperature": 3},
            "temperature",
            "0 and 1",
        ),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "top_k": 5}, "top_k", "top_k"),
        (
            {
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
                "thinking": {"type": "enabled", "budget_tokens": 1024},
            },
            "thinking",
            "thinking",
        ),
        (
            {
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}],
            },
            "messages.0.content.0.type",
            "document",
        ),
        (
            {
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            "tools.0.type",
            "web_search",
        ),
    ],
)
def test_bad_or_untranslatable_input_gets_an_anthropic_400_naming_the_field(
    gw: RunningGateway, body: dict[str, Any], param: str, fragment: str
) -> None:
    answer = post(gw.url, {"model": "gpt-mock", **body})
    assert answer.status_code == 400, answer.text
    error = answer.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert fragment in error["error"]["message"]
    assert param.split(".")[0] in error["error"]["message"] or param in error["error"]["message"]
    assert gw.upstream.requests() == []


def test_sdk_raises_the_matching_exceptions(gw: RunningGateway) -> None:
    with pytest.raises(anthropic.AuthenticationError) as bad_key:
        claude(gw.url, key="sk-wrong").messages.create(
            model="gpt-mock", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert bad_key.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError) as unknown:
        claude(gw.url).messages.create(
            model="gpt-mokc", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert "gpt-mock" in unknown.value.body["error"]["message"]  # did you mean
    malformed = httpx.post(
        f"{gw.url}/v1/messages", content=b"{not json", headers={"x-api-key": ACME_KEY}, timeout=10
    )
    assert malformed.status_code == 400 and malformed.json()["error"]["type"] == "invalid_request_error"


def test_a_failure_mid_stream_is_an_error_event_the_sdk_raises(gw: RunningGateway) -> None:
    gw.upstream.script("mock-1", "stream_break", "stream_break", "stream_break")
    with pytest.raises(anthropic.APIStatusError) as failed:
        with claude(gw.url).messages.stream(
            model="gpt-mock", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            "".join(stream.text_stream)
    assert failed.value.body["error"]["type"] in ("api_error", "overloaded_error")


def test_bearer_tokens_work_as_claude_code_sends_them(gw: RunningGateway) -> None:
    client = anthropic.Anthropic(base_url=gw.url, auth_token=ACME_KEY, max_retries=0)
    message = client.messages.create(
        model="gpt-mock", max_tokens=5, messages=[{"role": "user", "content": "x"}]
    )
    assert message.content[0].text == "echo: x"


def test_count_tokens(gw: RunningGateway) -> None:
    client = claude(gw.url)
    short = client.messages.count_tokens(model="gpt-mock", messages=[{"role": "user", "content": "hi"}])
    long = client.messages.count_tokens(
        model="gpt-mock",
        system="You are a careful assistant who cites sources.",
        messages=[{"role": "user", "content": "Explain retrieval augmented generation in detail " * 20}],
    )
    assert 0 < short.input_tokens < long.input_tokens
    assert long.input_tokens > 100
    assert gw.upstream.requests() == []  # counting never calls a model
    with pytest.raises(anthropic.AuthenticationError):
        claude(gw.url, key="sk-wrong").messages.count_tokens(
            model="gpt-mock", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.BadRequestError):
        client.messages.count_tokens(model="gpt-mock", messages=[])


# -- relayed to an Anthropic deployment ------------------------------------------------------------


def test_native_deployment_gets_the_body_and_headers_untouched(gw: RunningGateway) -> None:
    body = {
        "model": "claude-native",
        "max_tokens": 50,
        "top_k": 5,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}],
            }
        ],
    }
    answer = post(gw.url, body, **{"anthropic-beta": "prompt-caching-2024-07-31"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["content"][0]["text"] == "native: Hi"
    assert float(answer.headers["x-gateway-cost-usd"]) > 0  # 11 in, 5 out at the configured price
    sent = gw.upstream.requests()[-1]
    assert sent["path"] == "/v1/messages"
    assert sent["body"] == {**body, "model": "claude-up-1"}
    assert sent["headers"]["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert sent["headers"]["x-api-key"] == UPSTREAM_SECRET
    assert "authorization" not in sent["headers"]


def test_native_stream_is_relayed_and_the_sdk_reads_it(gw: RunningGateway) -> None:
    with claude(gw.url).messages.stream(
        model="claude-native", max_tokens=64, messages=[{"role": "user", "content": "Relay me please"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "native: Relay me please" and final.usage.output_tokens == 5


def test_native_error_event_mid_stream_reaches_the_client(gw: RunningGateway) -> None:
    gw.upstream.script("claude-up-1", "stream_error")
    with pytest.raises(anthropic.APIStatusError) as failed:
        with claude(gw.url).messages.stream(
            model="claude-native", max_tokens=64, messages=[{"role": "user", "content": "long enough text"}]
        ) as stream:
            "".join(stream.text_stream)
    assert failed.value.body["error"]["type"] == "overloaded_error"


def test_native_upstream_rejection_keeps_anthropics_envelope(gw: RunningGateway) -> None:
    gw.upstream.script("claude-up-1", "status:400")
    answer = post(
        gw.url, {"model": "claude-native", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    )
    assert answer.status_code == 400
    assert answer.json()["type"] == "error" and "mock error 400" in answer.json()["error"]["message"]


# -- chat clients reaching an Anthropic deployment -------------------------------------------------


def test_chat_client_reaches_an_anthropic_deployment(gw: RunningGateway) -> None:
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=ACME_KEY, max_retries=0)
    completion = client.chat.completions.create(
        model="claude-native",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
        stop="END",
    )
    assert completion.choices[0].message.content == "native: Hi there"
    assert completion.usage is not None and completion.usage.prompt_tokens == 11
    sent = gw.upstream.requests()[-1]
    assert sent["path"] == "/v1/messages"
    assert sent["body"]["system"] == "Be brief." and sent["body"]["max_tokens"] == 4096
    assert sent["body"]["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi there"}]}]
    assert sent["body"]["stop_sequences"] == ["END"]

    stream = client.chat.completions.create(
        model="claude-native", messages=[{"role": "user", "content": "Stream it"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "native: Stream it"

    gw.upstream.script("claude-up-1", "tool_call")
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_TOOL["input_schema"]}}
    ]
    called = client.chat.completions.create(
        model="claude-native", messages=[{"role": "user", "content": "Paris?"}], tools=tools
    )
    call = called.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert called.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and orjson.loads(call.function.arguments) == {"city": "Paris"}

    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="claude-native",
            messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_object"},
        )
    assert refused.value.body["param"] == "response_format"  # type: ignore[index]
