"""The rate-limit stage: OpenAI's headers and 429s, token counting offline, reconciliation."""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.chain import Handler, compose
from gateway.config import DeploymentConfig, GatewayConfig, ModelConfig
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.policy import Policy
from gateway.pricing import PriceOverride, Pricing
from gateway.response import GatewayResponse
from gateway.sse import DONE_EVENT, encode_event, event_data, iter_events
from gateway.state.memory import MemoryState
from gateway.state.settings import ModelRateLimit, RateLimitPolicy
from middleware.rate_limit import RateLimitStage, format_duration


@functools.cache
def pricing() -> Pricing:
    config = GatewayConfig(
        models=[
            ModelConfig(
                name="gpt-4o-mini", deployments=[DeploymentConfig(provider="openai", model="gpt-4o-mini")]
            ),
            ModelConfig(name="cheap", deployments=[DeploymentConfig(provider="openai", model="gpt-4o-mini")]),
            ModelConfig(
                name="llama",
                deployments=[
                    DeploymentConfig(
                        provider="vllm", model="meta-llama/Llama-3.1-8B-Instruct", api_base="http://x"
                    )
                ],
            ),
        ]
    )
    return Pricing(config, {"cheap": PriceOverride(input_per_1k=0.0001, output_per_1k=0.0002)})


def make_ctx(
    model: str = "gpt-4o-mini", stream: bool = False, key_id: str = "k1", **body: Any
) -> RequestContext:
    request = {"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    request.update(body)
    return RequestContext(
        request_id="r",
        started=time.perf_counter(),
        endpoint="chat",
        policy=Policy(tenant="t"),
        key_id=key_id,
        body=request,
        model=model,
        stream=stream,
        client_headers={},
    )


def completion(ctx: RequestContext, prompt: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion",
        "model": ctx.model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        },
    }


def ok_handler(
    prompt: int = 20, completion_tokens: int = 5, seen: list[RequestContext] | None = None
) -> Handler:
    async def handler(ctx: RequestContext) -> GatewayResponse:
        if seen is not None:
            seen.append(ctx)
        return GatewayResponse.of_json(completion(ctx, prompt, completion_tokens))

    return handler


def stream_handler(
    prompt: int = 20, completion_tokens: int = 5, send_usage: bool = True, seen: list[dict] | None = None
) -> Handler:
    async def handler(ctx: RequestContext) -> GatewayResponse:
        if seen is not None:
            seen.append(ctx.body)
        include = bool((ctx.body.get("stream_options") or {}).get("include_usage")) and send_usage

        async def events() -> AsyncIterator[bytes]:
            base = {"id": "c", "object": "chat.completion.chunk", "model": ctx.model}
            for word in ["The ", "capital ", "is ", "Paris."]:
                chunk = {**base, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
                if include:
                    chunk["usage"] = None  # what OpenAI does once include_usage is on
                yield encode_event(chunk)
            if include:
                usage = {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt + completion_tokens,
                }
                yield encode_event({**base, "choices": [], "usage": usage})
            yield DONE_EVENT

        return GatewayResponse(stream=events())

    return handler


async def chunks(response: GatewayResponse) -> list[dict[str, Any]]:
    assert response.stream is not None
    out = []
    async for event in iter_events(response.stream):
        payload = event_data(event)
        if payload and payload != b"[DONE]":
            out.append(orjson.loads(payload))
    return out


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.12, "120ms"), (0.0004, "1ms"), (1, "1s"), (1.5, "1.5s"), (59.874, "59.874s"), (360, "6m0s"),
     (3723, "1h2m3s"), (0, "0s")],
)  # fmt: skip
def test_reset_format_is_openai_like(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


async def test_headers_and_429_over_rpm() -> None:
    stage = RateLimitStage(RateLimitPolicy(enabled=True, rpm=2, tpm=10_000), MemoryState(), pricing())
    ctx = make_ctx()
    await stage.handle(ctx, ok_handler())
    h = ctx.response_headers
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("2", "1")
    assert h["x-ratelimit-reset-requests"] == "1m0s"
    assert h["x-ratelimit-limit-tokens"] == "10000"
    assert 9_950 < int(h["x-ratelimit-remaining-tokens"]) < 10_000
    await stage.handle(make_ctx(), ok_handler())
    ctx = make_ctx()
    with pytest.raises(GatewayError) as raised:
        await stage.handle(ctx, ok_handler())
    error = raised.value
    assert error.status == 429 and error.type == "requests" and error.code == "rate_limit_exceeded"
    assert "Limit 2, Used 2, Requested 1" in error.message
    assert 58 <= int(error.headers["retry-after"]) <= 60 and int(error.headers["retry-after-ms"]) > 58_000
    assert ctx.response_headers["x-ratelimit-remaining-requests"] == "0"
    assert ctx.decisions[-1].action == "reject"


async def test_tokens_are_counted_before_and_reconciled_after() -> None:
    state = MemoryState()
    stage = RateLimitStage(RateLimitPolicy(enabled=True, tpm=1000), state, pricing())
    ctx = make_ctx()
    prompt = pricing().count_prompt("gpt-4o-mini", ctx.body)
    assert 8 <= prompt <= 20
    await stage.handle(ctx, ok_handler(prompt=300, completion_tokens=690))
    assert ctx.response_headers["x-ratelimit-remaining-tokens"] == str(1000 - prompt)
    ctx = make_ctx()
    with pytest.raises(GatewayError) as raised:  # 990 real tokens + this prompt > 1000
        await stage.handle(ctx, ok_handler())
    assert raised.value.type == "tokens"
    assert f"Used 990, Requested {prompt}" in raised.value.message


async def test_per_key_and_per_model_limits() -> None:
    settings = RateLimitPolicy(enabled=True, per_key_rpm=1, per_model={"cheap": ModelRateLimit(rpm=5)})
    stage = RateLimitStage(settings, MemoryState(), pricing())
    await stage.handle(make_ctx(key_id="a"), ok_handler())
    await stage.handle(make_ctx(key_id="b"), ok_handler())  # another key has its own minute
    with pytest.raises(GatewayError, match="for key a on requests"):
        await stage.handle(make_ctx(key_id="a"), ok_handler())
    ctx = make_ctx(model="cheap", key_id="c")
    await stage.handle(ctx, ok_handler())
    # The key has 0 left, the model 4: the headers show the tighter one.
    assert ctx.response_headers["x-ratelimit-remaining-requests"] == "0"
    assert ctx.response_headers["x-ratelimit-limit-requests"] == "1"


async def test_stream_asks_for_usage_strips_it_and_reconciles() -> None:
    state = MemoryState()
    stage = RateLimitStage(RateLimitPolicy(enabled=True, tpm=1000), state, pricing())
    upstream_bodies: list[dict] = []
    ctx = make_ctx(stream=True)
    response = await stage.handle(
        ctx, stream_handler(prompt=100, completion_tokens=400, seen=upstream_bodies)
    )
    got = await chunks(response)
    assert upstream_bodies[0]["stream_options"] == {"include_usage": True}
    assert all("usage" not in c for c in got)  # the client did not ask for it
    assert "".join(c["choices"][0]["delta"]["content"] for c in got) == "The capital is Paris."
    probe = await state.admit([], [])
    assert probe.allowed
    ctx2 = make_ctx()
    with pytest.raises(GatewayError):
        await RateLimitStage(RateLimitPolicy(enabled=True, tpm=500), state, pricing()).handle(
            ctx2, ok_handler()
        )


async def test_stream_keeps_usage_the_client_asked_for() -> None:
    stage = RateLimitStage(RateLimitPolicy(enabled=True, tpm=1000), MemoryState(), pricing())
    ctx = make_ctx(stream=True, stream_options={"include_usage": True})
    got = await chunks(await stage.handle(ctx, stream_handler()))
    assert got[-1]["usage"]["completion_tokens"] == 5


async def test_stream_without_usage_counts_the_streamed_text() -> None:
    state = MemoryState()
    stage = RateLimitStage(RateLimitPolicy(enabled=True, tpm=1000), state, pricing())
    ctx = make_ctx(stream=True)
    await chunks(await stage.handle(ctx, stream_handler(send_usage=False)))
    settled = next(d for d in ctx.decisions if d.stage == "usage")
    assert settled.detail is not None and settled.detail["completion_tokens"] == 5  # "The capital is Paris."


async def test_rate_limit_counts_a_request_answered_before_a_deferred_budget_stage() -> None:
    stage = RateLimitStage(
        RateLimitPolicy(enabled=True, rpm=3), MemoryState(), pricing(), defer_to_budget=True
    )

    async def cache_hit(ctx: RequestContext) -> GatewayResponse:
        return GatewayResponse.of_json(completion(ctx, 0, 0))

    ctx = make_ctx()
    await compose([stage], cache_hit)(ctx)
    assert ctx.response_headers["x-ratelimit-remaining-requests"] == "2"


def test_token_counting_never_touches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Llama would load its tokenizer from the hub and image parts would be fetched: neither may happen."""
    attempts: list[Any] = []
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if not (isinstance(address, tuple) and str(address[0]).startswith(("127.", "::1", "localhost"))):
            attempts.append(address)
            raise OSError("network disabled in this test")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: attempts.append(a) or [])
    p = pricing()
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}]}
    started = time.perf_counter()
    for model in ["llama", "gpt-4o-mini", "claude-3-5-haiku-latest", "unknown-model", "llama-3-70b"]:
        assert p.count_prompt(model, body) > 5
        assert p.count_text(model, "Paris is the capital of France.") > 3
    assert time.perf_counter() - started < 5
    assert attempts == []
    assert p.tokenizer_model("llama") is None  # counted with litellm's bundled cl100k


def test_litellm_uses_its_bundled_tiktoken_files() -> None:
    import os
    from pathlib import Path

    pricing()
    cache = Path(os.environ["TIKTOKEN_CACHE_DIR"])
    assert cache.is_dir() and "litellm" in str(cache)
    # sha1 of the encoding URLs, which is how tiktoken names its cache files: cl100k_base, o200k_base.
    assert (cache / "9b5ad71b2ce5302211f9c61530b329a4922fc6a4").is_file()
    assert (cache / "fb374d419588a4632f3f557e76b4b70aebbca790").is_file()
