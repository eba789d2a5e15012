"""Legacy completions through the gateway: the openai SDK and LlamaIndex's OpenAILike unmodified,
translated for chat upstreams, relayed to deployments that serve /v1/completions themselves,
validated against OpenAI's contract."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import yaml

from gateway.app import create_app
from gateway.config import load_config
from tests.conftest import ACME_KEY, UPSTREAM_SECRET, MockServer, RunningGateway, ServerThread
from tests.contract import check


def sdk(url: str, key: str = ACME_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def post(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {ACME_KEY}"}, timeout=30
    )


def chunks(text: str) -> list[dict[str, Any]]:
    found = []
    for block in text.split("\n\n"):
        data = block.strip().removeprefix("data:").strip()
        if data and data != "[DONE]":
            found.append(orjson.loads(data))
    assert text.rstrip().endswith("data: [DONE]")
    return found


@pytest.fixture
def gw(tmp_path: Path, upstream: MockServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningGateway]:
    from tests.conftest import write_gateway_files

    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    native = {
        "name": "instruct-native",
        "deployments": [
            {
                "provider": "openai_compatible",
                "model": "instruct-1",
                "api_base": f"{upstream.base}/v1",
                "api_key_env": "MOCK_UPSTREAM_KEY",
                "apis": ["chat", "completions"],
            }
        ],
    }
    only = {
        "name": "completions-only",
        "deployments": [
            {
                "provider": "openai_compatible",
                "model": "base-1",
                "api_base": f"{upstream.base}/v1",
                "apis": ["completions"],
            }
        ],
    }
    path = write_gateway_files(tmp_path, upstream.base, extra_models=[native, only])
    policy_path = tmp_path / "policies" / "acme.yaml"
    policy = yaml.safe_load(policy_path.read_text())
    policy["models"] += ["instruct-native", "completions-only"]
    policy_path.write_text(yaml.safe_dump(policy))
    server = ServerThread(create_app(load_config(path)))
    yield RunningGateway(server, path, upstream)
    server.stop()


# -- translated for a chat upstream ----------------------------------------------------------------


def test_sdk_create_is_translated_to_chat(gw: RunningGateway) -> None:
    completion = sdk(gw.url).completions.create(
        model="gpt-mock", prompt="Say this is a test", temperature=0, stop=["\n"], seed=3
    )
    assert completion.object == "text_completion" and completion.model == "gpt-mock"
    assert completion.choices[0].text == "echo: Say this is a test"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 16
    sent = gw.upstream.requests()[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["messages"] == [{"role": "user", "content": "Say this is a test"}]
    # OpenAI's default for this endpoint, so the answer is as long as a real one would be.
    assert sent["body"]["max_tokens"] == 16
    assert sent["body"]["stop"] == ["\n"] and sent["body"]["seed"] == 3


def test_json_and_chunks_match_the_contract(gw: RunningGateway) -> None:
    answer = post(gw.url, {"model": "gpt-mock", "prompt": "hi", "max_tokens": 5})
    assert answer.status_code == 200, answer.text
    check(answer.json(), "CreateCompletionResponse")
    streamed = post(
        gw.url,
        {"model": "gpt-mock", "prompt": "hi", "stream": True, "stream_options": {"include_usage": True}},
    )
    found = chunks(streamed.text)
    # OpenAI streams the same object in pieces, finish_reason null until the last one.
    finishing = [c for c in found if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishing) == 1
    check(finishing[0], "CreateCompletionResponse")
    assert "".join(c["choices"][0]["text"] for c in found if c["choices"]) == "Hello from the mock upstream."
    assert found[-1]["choices"] == [] and found[-1]["usage"]["total_tokens"] == 16


def test_sdk_stream(gw: RunningGateway) -> None:
    stream = sdk(gw.url).completions.create(model="gpt-mock", prompt="Tell me", stream=True)
    pieces = list(stream)
    assert "".join(p.choices[0].text for p in pieces if p.choices) == "Hello from the mock upstream."
    assert pieces[-1].choices[0].finish_reason == "stop"


def test_llamaindex_openailike_defaults_use_completions(gw: RunningGateway) -> None:
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(model="gpt-mock", api_base=f"{gw.url}/v1", api_key=ACME_KEY, max_retries=0)
    assert llm.complete("What is a gateway?").text == "echo: What is a gateway?"
    assert gw.upstream.requests()[-1]["body"]["messages"][0]["content"] == "What is a gateway?"
    streamed = "".join(r.delta or "" for r in llm.stream_complete("Stream please"))
    assert streamed == "Hello from the mock upstream."


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"echo": True}, "echo"),
        ({"suffix": " and so on"}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"logprobs": 2}, "logprobs"),
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"prompt": [1212, 318]}, "prompt"),
    ],
)
def test_fields_only_a_completions_model_has_are_refused_for_chat_and_relayed_natively(
    gw: RunningGateway, extra: dict[str, Any], param: str
) -> None:
    body = {"model": "gpt-mock", "prompt": "Once upon a time", **extra}
    refused = post(gw.url, body)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "unsupported_parameter" and error["param"] == param
    assert param in error["message"] and "gpt-mock" in error["message"]
    assert gw.upstream.requests() == []
    relayed = post(gw.url, {**body, "model": "instruct-native"})
    assert relayed.status_code == 200, relayed.text
    sent = gw.upstream.requests()[-1]
    assert sent["path"] == "/v1/completions"
    assert sent["body"] == {**body, "model": "instruct-1", "max_tokens": 16}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt-mock"}, "prompt"),
        ({"model": "gpt-mock", "prompt": {"text": "x"}}, "prompt"),
        ({"model": "gpt-mock", "prompt": "x", "max_tokens": "many"}, "max_tokens"),
        ({"model": "gpt-mock", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"model": "gpt-mock", "prompt": "x", "logprobs": 9}, "logprobs"),
        ({"prompt": "x"}, "model"),
    ],
)
def test_bad_input_gets_openai_errors_naming_the_field(
    gw: RunningGateway, body: dict[str, Any], param: str
) -> None:
    answer = post(gw.url, body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param


def test_mid_stream_failure_ends_with_an_error_the_sdk_raises(gw: RunningGateway) -> None:
    gw.upstream.script("mock-1", "stream_break", "stream_break", "stream_break")
    with pytest.raises(openai.APIError):
        for _ in sdk(gw.url).completions.create(model="gpt-mock", prompt="hi", stream=True):
            pass


# -- relayed to a native completions deployment ----------------------------------------------------


def test_native_json_and_stream_are_relayed(gw: RunningGateway) -> None:
    completion = sdk(gw.url).completions.create(model="instruct-native", prompt="Native?", max_tokens=7)
    assert completion.choices[0].text == "native: Native?"
    sent = gw.upstream.requests()[-1]
    assert (
        sent["path"] == "/v1/completions" and sent["headers"]["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    )
    stream = sdk(gw.url).completions.create(model="instruct-native", prompt="Stream", stream=True)
    pieces = list(stream)
    assert "".join(p.choices[0].text for p in pieces if p.choices) == "native: Stream"
    # The gateway asked for usage (accounting needs it); the client did not, so it never sees it.
    assert gw.upstream.requests()[-1]["body"]["stream_options"] == {"include_usage": True}
    assert all(p.choices for p in pieces)


def test_chat_client_reaches_a_completions_only_deployment(gw: RunningGateway) -> None:
    completion = sdk(gw.url).chat.completions.create(
        model="completions-only",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=20,
    )
    sent = gw.upstream.requests()[-1]["body"]
    assert sent["prompt"] == "System: Be brief.\n\nUser: Hi\n\nAssistant:" and sent["max_tokens"] == 20
    assert completion.choices[0].message.content == f"native: {sent['prompt']}"
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(gw.url).chat.completions.create(
            model="completions-only",
            messages=[{"role": "user", "content": "x"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        )
    assert refused.value.body["param"] == "tools"  # type: ignore[index]
