"""The clients teams point at a gateway, unmodified, through every protocol it serves: the OpenAI
Agents SDK (Responses API), LangChain's ChatOpenAI with use_responses_api, and the Vercel AI SDK
(JavaScript: Responses by default, chat, completions and Anthropic Messages), tools included.

The JavaScript clients are installed from tests/js/package-lock.json with `npm ci` (the package
registry is reachable wherever the suite runs); the test skips, saying why, without node or npm.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

from tests.conftest import ACME_KEY, RunningGateway

JS_DIR = Path(__file__).resolve().parent / "js"


def test_openai_agents_sdk_runs_an_agent_with_a_tool(gateway: RunningGateway) -> None:
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)  # the SDK would export its traces to OpenAI otherwise
    seen: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Weather of a city."""
        seen.append(city)
        return f"18 C and sunny in {city}"

    gateway.upstream.script("mock-1", "tool_call", "say:It is 18 C and sunny in Paris.")

    async def run() -> str:
        client = AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=ACME_KEY, max_retries=0)
        model = OpenAIResponsesModel(model="gpt-mock", openai_client=client)
        agent = Agent(name="weather", instructions="Use the tool.", model=model, tools=[get_weather])
        result = await Runner.run(agent, "Weather in Paris?")
        return str(result.final_output)

    assert asyncio.run(run()) == "It is 18 C and sunny in Paris."
    assert seen == ["Paris"]
    requests = gateway.upstream.requests()
    assert [r["path"] for r in requests] == ["/v1/chat/completions"] * 2
    second = requests[1]["body"]["messages"]
    assert second[-1] == {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny in Paris"}
    assert requests[0]["body"]["tools"][0]["function"]["name"] == "get_weather"


def test_langchain_chatopenai_with_the_responses_api(gateway: RunningGateway) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model="gpt-mock",
        base_url=f"{gateway.url}/v1",
        api_key=ACME_KEY,
        use_responses_api=True,
        max_retries=0,
    )
    answer = llm.invoke("What is a gateway?")
    assert answer.text == "echo: What is a gateway?"
    assert answer.usage_metadata is not None and answer.usage_metadata["total_tokens"] == 16
    streamed = "".join(chunk.text for chunk in llm.stream("Stream it"))
    assert streamed == "Hello from the mock upstream."
    assert {r["path"] for r in gateway.upstream.requests()} == {"/v1/chat/completions"}


def _npm_ci() -> None:
    if (JS_DIR / "node_modules" / "ai").is_dir():
        return
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        pytest.fail(f"npm ci in {JS_DIR} failed:\n{done.stderr[-2000:]}")


def test_vercel_ai_sdk_through_every_protocol(gateway: RunningGateway) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to run the Vercel AI SDK (JavaScript)")
    _npm_ci()
    # Per call, in the script's order: the tool step asks for a call, then answers.
    gateway.upstream.script("mock-1", "ok", "ok", "tool_call", "say:Sunny in Paris.")
    done = subprocess.run(
        ["node", "clients.mjs", gateway.url, ACME_KEY, "gpt-mock"],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert got["responses"] == {"text": "echo: What is a gateway?", "finishReason": "stop", "inputTokens": 10}
    assert got["responses_stream"] == {"text": "Hello from the mock upstream.", "finishReason": "stop"}
    assert got["responses_tools"]["toolResults"] == ["18 C and sunny in Paris"]
    assert got["responses_tools"]["text"] == "Sunny in Paris." and got["responses_tools"]["steps"] == 2
    assert got["chat"] == {"text": "echo: Chat?"}
    # The SDK renders its own chat-style prompt ("user:\nComplete?\n\nassistant:\n"); it arrives whole.
    assert got["completion"] == {"text": "echo: user:\nComplete?\n\nassistant:\n"}
    assert got["messages"] == {"text": "echo: Anthropic?", "finishReason": "stop"}
    assert got["messages_stream"] == {"text": "Hello from the mock upstream."}
    paths = [r["path"] for r in gateway.upstream.requests()]
    assert paths == ["/v1/chat/completions"] * len(paths)
