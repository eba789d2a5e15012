"""The official openai SDK works against the gateway with only base_url and api_key changed."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import ACME_KEY, RunningGateway


def sdk(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=ACME_KEY, max_retries=0)


def test_sync_chat_completion(gateway: RunningGateway) -> None:
    completion = sdk(gateway).chat.completions.create(
        model="gpt-mock", messages=[{"role": "user", "content": "ping"}], temperature=0.2, seed=7
    )
    assert completion.choices[0].message.content == "echo: ping"
    assert completion.usage is not None and completion.usage.total_tokens == 16
    sent = gateway.upstream.requests()[-1]
    # The public name is mapped to the deployment's model, other fields pass through untouched.
    assert sent["body"]["model"] == "mock-1"
    assert sent["body"]["seed"] == 7 and sent["body"]["temperature"] == 0.2


def test_sync_streaming(gateway: RunningGateway) -> None:
    stream = sdk(gateway).chat.completions.create(
        model="gpt-mock",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the mock upstream."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


async def test_async_chat_and_stream(gateway: RunningGateway) -> None:
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=ACME_KEY, max_retries=0)
    completion = await client.chat.completions.create(
        model="gpt-mock", messages=[{"role": "user", "content": "a"}]
    )
    assert completion.choices[0].message.content == "echo: a"
    stream = await client.chat.completions.create(
        model="gpt-mock", messages=[{"role": "user", "content": "b"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello from the mock upstream."
    await client.close()


def test_tool_calls_round_trip(gateway: RunningGateway) -> None:
    gateway.upstream.script("mock-1", "tool_call")
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    completion = sdk(gateway).chat.completions.create(
        model="gpt-mock",
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=tools,
        tool_choice="auto",
        response_format={"type": "text"},
        n=1,
        stop=["\n\n"],
        logprobs=False,
        extra_body={"vendor_extension": {"keep": True}},
    )
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and completion.choices[0].finish_reason == "tool_calls"
    sent = gateway.upstream.requests()[-1]["body"]
    assert sent["tools"] == tools and sent["tool_choice"] == "auto"
    assert sent["vendor_extension"] == {"keep": True}  # unknown fields untouched
    assert sent["stop"] == ["\n\n"] and sent["response_format"] == {"type": "text"}


def test_models_list_only_the_tenants_models(gateway: RunningGateway) -> None:
    ids = {m.id for m in sdk(gateway).models.list()}
    assert "gpt-mock" in ids and "other-only" not in ids
    assert sdk(gateway).models.retrieve("gpt-mock").id == "gpt-mock"
    with pytest.raises(openai.NotFoundError):
        sdk(gateway).models.retrieve("other-only")


def test_embeddings_through_sdk(gateway: RunningGateway) -> None:
    result = sdk(gateway).embeddings.create(model="embed-mock", input=["a", "b"])
    assert [d.index for d in result.data] == [0, 1]


def test_errors_raise_sdk_exceptions(gateway: RunningGateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"{gateway.url}/v1", api_key="sk-wrong", max_retries=0
        ).chat.completions.create(model="gpt-mock", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError) as info:
        sdk(gateway).chat.completions.create(model="other-only", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"


def test_stream_broken_mid_way_raises_in_the_sdk(gateway: RunningGateway) -> None:
    # Retries happen before the first byte; after it, the break must surface as an error.
    gateway.upstream.script("mock-1", "stream_break")
    stream = sdk(gateway).chat.completions.create(
        model="gpt-mock", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


def test_stream_without_done_is_not_a_clean_end(gateway: RunningGateway) -> None:
    gateway.upstream.script("mock-1", "stream_no_done")
    stream = sdk(gateway).chat.completions.create(
        model="gpt-mock", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError):
        list(stream)


def test_stream_failing_before_first_byte_is_retried_cleanly(gateway: RunningGateway) -> None:
    gateway.upstream.script("mock-1", "stream_empty", "status:502")
    stream = sdk(gateway).chat.completions.create(
        model="gpt-mock", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello from the mock upstream."
    assert len(gateway.upstream.requests()) == 3


def test_stream_falls_back_to_another_model_before_first_byte(gateway: RunningGateway) -> None:
    gateway.upstream.script("primary-1", "stream_empty", "stream_empty")
    stream = sdk(gateway).chat.completions.create(
        model="primary", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == "Hello from the mock upstream."
    )
    assert chunks[0].model == "backup-1"  # served by the fallback model's deployment


def test_litellm_provider_path(gateway: RunningGateway) -> None:
    """A non-fast-path provider goes through litellm's async API (here litellm's hosted_vllm client)."""
    client = sdk(gateway)
    completion = client.chat.completions.create(
        model="via-litellm", messages=[{"role": "user", "content": "lit"}]
    )
    assert completion.choices[0].message.content == "echo: lit"
    stream = client.chat.completions.create(
        model="via-litellm", messages=[{"role": "user", "content": "lit"}], stream=True
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        == "Hello from the mock upstream."
    )
    assert gateway.upstream.requests()[-1]["body"]["model"] == "lit-1"
