"""The cache stage with the in-memory store: hits, misses, scopes, isolation, expiry, bypass."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.cache.settings import CachePolicy
from gateway.cache.store import MemoryCacheStore
from gateway.errors import GatewayError
from gateway.protocols.sse import encode_event
from gateway.retrieval.embedder import LocalMiniLMEmbedder
from middleware.cache import CacheStage, policy_fingerprint
from tests.test_cache_support import Upstream, answer_text, client_json, make_ctx, read_stream


@pytest.fixture(scope="module")
def embedder() -> LocalMiniLMEmbedder:
    return LocalMiniLMEmbedder()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make_stage(embedder: LocalMiniLMEmbedder, store: MemoryCacheStore | None = None, **settings: Any):
    policy = CachePolicy(enabled=True, **settings)
    return CacheStage(policy, store or MemoryCacheStore(), embedder)


async def ask(stage: CacheStage, upstream: Upstream, *args: Any, **kwargs: Any):
    ctx = make_ctx(*args, **kwargs)
    response = await stage.handle(ctx, upstream)
    text = await answer_text(response)
    await stage.drain()
    return ctx, response, text


async def test_exact_hit_skips_the_upstream(embedder) -> None:
    stage, upstream = make_stage(embedder), Upstream()
    ctx, _, first = await ask(stage, upstream, "What is the capital of France?")
    assert ctx.response_headers["x-gateway-cache"] == "miss"
    ctx, response, second = await ask(stage, upstream, "What is the capital of France?")
    assert upstream.calls == 1
    assert second == first
    assert ctx.response_headers["x-gateway-cache"] == "hit"
    body = client_json(response)
    assert body["id"].startswith("chatcmpl-cache-") and body["usage"]["total_tokens"] == 0
    assert ctx.decisions[-1].detail["original_usage"]["total_tokens"] == 10


async def test_semantic_hit_for_a_paraphrase(embedder) -> None:
    stage, upstream = make_stage(embedder), Upstream("Use the 'Forgot password' link.")
    await ask(stage, upstream, "How do I reset my password?")
    ctx, _, text = await ask(stage, upstream, "How can I reset my password?")
    assert upstream.calls == 1 and text == "Use the 'Forgot password' link."
    assert ctx.response_headers["x-gateway-cache"] == "semantic-hit"
    assert float(ctx.response_headers["x-gateway-cache-similarity"]) >= stage.threshold


async def test_unrelated_question_misses_and_reports_the_similarity(embedder) -> None:
    stage, upstream = make_stage(embedder), Upstream()
    await ask(stage, upstream, "How do I reset my password?")
    ctx, _, _ = await ask(stage, upstream, "How do I delete my account?")
    assert upstream.calls == 2
    assert ctx.response_headers["x-gateway-cache"] == "miss"
    assert float(ctx.response_headers["x-gateway-cache-similarity"]) < stage.threshold


async def test_follow_up_never_hits_another_conversation(embedder) -> None:
    stage, upstream = make_stage(embedder), Upstream("50 km/h")
    speed = [
        {"role": "user", "content": "What is the speed limit in Zone A?"},
        {"role": "assistant", "content": "30 km/h."},
        {"role": "user", "content": "and for Zone B?"},
    ]
    parking = [
        {"role": "user", "content": "What does parking cost in Zone A?"},
        {"role": "assistant", "content": "2 EUR an hour."},
        {"role": "user", "content": "and for Zone B?"},
    ]
    await ask(stage, upstream, speed)
    ctx, _, _ = await ask(stage, upstream, parking)
    assert upstream.calls == 2 and ctx.response_headers["x-gateway-cache"] == "miss"
    assert "x-gateway-cache-similarity" not in ctx.response_headers  # nothing in that scope
    # The same conversation asks again in other words: that one may hit.
    ctx, _, _ = await ask(stage, upstream, [*speed[:2], {"role": "user", "content": "And for Zone B?"}])
    assert ctx.response_headers["x-gateway-cache"] in ("hit", "semantic-hit") and upstream.calls == 2


async def test_system_prompt_and_model_are_part_of_the_scope(embedder) -> None:
    stage, upstream = make_stage(embedder), Upstream()
    question = {"role": "user", "content": "How do I reset my password?"}
    await ask(stage, upstream, [{"role": "system", "content": "Answer in French."}, question])
    ctx, _, _ = await ask(stage, upstream, [{"role": "system", "content": "Answer in German."}, question])
    assert ctx.response_headers["x-gateway-cache"] == "miss"
    ctx = make_ctx([question])
    ctx.request.set_model("other-model")
    await stage.handle(ctx, upstream)
    assert ctx.response_headers["x-gateway-cache"] == "miss" and upstream.calls == 3


async def test_no_entry_is_served_to_another_tenant(embedder) -> None:
    store = MemoryCacheStore()  # one store shared by both tenants' stages, as in the gateway
    stage_t, stage_u = make_stage(embedder, store), make_stage(embedder, store)
    await ask(stage_t, Upstream("t's secret answer"), "How do I reset my password?", tenant="t")
    upstream_u = Upstream("u's own answer")
    ctx, _, text = await ask(stage_u, upstream_u, "How do I reset my password?", tenant="u")
    assert ctx.response_headers["x-gateway-cache"] == "miss"
    assert "x-gateway-cache-similarity" not in ctx.response_headers  # t's entries are not even compared
    assert text == "u's own answer"
    ctx, _, text = await ask(stage_u, upstream_u, "How can I reset my password?", tenant="u")
    assert ctx.response_headers["x-gateway-cache"] == "semantic-hit" and text == "u's own answer"
    ctx, _, text = await ask(stage_t, Upstream(), "How can I reset my password?", tenant="t")
    assert text == "t's secret answer"


async def test_a_new_corpus_version_invalidates(embedder) -> None:
    versions = {"t": 1}
    stage = CacheStage(
        CachePolicy(enabled=True), MemoryCacheStore(), embedder, corpus_version=versions.__getitem__
    )
    upstream = Upstream()
    await ask(stage, upstream, "What is the refund policy?")
    ctx, _, _ = await ask(stage, upstream, "What is the refund policy?")
    assert ctx.response_headers["x-gateway-cache"] == "hit"
    versions["t"] = 2  # documents were ingested
    ctx, _, _ = await ask(stage, upstream, "What is the refund policy?")
    assert ctx.response_headers["x-gateway-cache"] == "miss" and upstream.calls == 2


async def test_entries_expire_after_the_ttl(embedder) -> None:
    clock = Clock()
    stage, upstream = make_stage(embedder, MemoryCacheStore(clock), ttl_s=60), Upstream()
    await ask(stage, upstream, "How do I reset my password?")
    clock.now += 59
    ctx, _, _ = await ask(stage, upstream, "How can I reset my password?")
    assert ctx.response_headers["x-gateway-cache"] == "semantic-hit"
    clock.now += 2
    ctx, _, _ = await ask(stage, upstream, "How can I reset my password?")
    assert ctx.response_headers["x-gateway-cache"] == "miss" and upstream.calls == 2
    assert "x-gateway-cache-similarity" not in ctx.response_headers  # the expired entry is not a candidate


async def test_exact_entries_expire_after_the_ttl(embedder) -> None:
    clock = Clock()
    stage, upstream = make_stage(embedder, MemoryCacheStore(clock), ttl_s=60, semantic=False), Upstream()
    await ask(stage, upstream, "How do I reset my password?")
    clock.now += 59
    ctx, _, _ = await ask(stage, upstream, "How do I reset my password?")
    assert ctx.response_headers["x-gateway-cache"] == "hit"
    clock.now += 2
    ctx, _, _ = await ask(stage, upstream, "How do I reset my password?")
    assert ctx.response_headers["x-gateway-cache"] == "miss" and upstream.calls == 2


async def test_cache_control_no_cache_bypasses_and_refreshes(embedder) -> None:
    stage = make_stage(embedder)
    await ask(stage, Upstream("old"), "What is the capital of France?")
    upstream = Upstream("new")
    ctx, _, text = await ask(
        stage, upstream, "What is the capital of France?", headers={"Cache-Control": "no-cache"}
    )
    assert (text, upstream.calls, ctx.response_headers["x-gateway-cache"]) == ("new", 1, "bypass")
    ctx, _, text = await ask(stage, upstream, "What is the capital of France?")
    assert text == "new" and ctx.response_headers["x-gateway-cache"] == "hit"
    ctx, _, _ = await ask(
        stage, Upstream("newest"), "What is the capital of France?", headers={"cache-control": "no-store"}
    )
    _, _, text = await ask(stage, upstream, "What is the capital of France?")
    assert text == "new"  # no-store did not replace it


async def test_json_fill_serves_a_stream_and_back(embedder) -> None:
    stage, upstream = make_stage(embedder), Upstream("Forty-two.")
    await ask(stage, upstream, "What is the answer?")
    ctx = make_ctx("What is the answer?", stream=True, stream_options={"include_usage": True})
    response = await stage.handle(ctx, upstream)
    text, chunks, done = await read_stream(response, ctx.request)
    assert (text, done, upstream.calls) == ("Forty-two.", True, 1)
    assert ctx.response_headers["x-gateway-cache"] == "hit"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

    # A stream fills the cache; a JSON request (and a paraphrase) is served from it.
    await ask(stage, upstream, "What is the refund policy for annual plans?", stream=True)
    assert upstream.calls == 2
    ctx, response, text = await ask(stage, upstream, "What is the refund policy for annual plans?")
    assert text == "Forty-two." and ctx.response_headers["x-gateway-cache"] == "hit"
    assert client_json(response)["choices"][0]["finish_reason"] == "stop"
    ctx, _, _ = await ask(stage, upstream, "What is your refund policy for annual plans?")
    assert ctx.response_headers["x-gateway-cache"] == "semantic-hit" and upstream.calls == 2


@pytest.mark.parametrize("mode", ["truncated", "error_event"])
async def test_an_incomplete_stream_is_not_stored(embedder, mode: str) -> None:
    stage = make_stage(embedder)
    await ask(stage, Upstream(mode=mode), "What is the capital of France?", stream=True)
    upstream = Upstream()
    ctx, _, _ = await ask(stage, upstream, "What is the capital of France?")
    assert upstream.calls == 1 and ctx.response_headers["x-gateway-cache"] == "miss"


async def test_an_error_is_not_stored(embedder) -> None:
    stage = make_stage(embedder)
    ctx = make_ctx("What is the capital of France?")
    response = await stage.handle(ctx, Upstream(mode="error"))
    await stage.drain()
    assert response.status == 500
    upstream = Upstream()
    await ask(stage, upstream, "What is the capital of France?")
    assert upstream.calls == 1


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"n": 2}, "n>1"),
        ({"temperature": 0.7}, "nondeterministic"),
        ({"top_p": 0.5}, "nondeterministic"),
        ({"logprobs": True}, "logprobs"),
    ],
)
async def test_requests_that_want_fresh_samples_bypass(embedder, extra: dict[str, Any], reason: str) -> None:
    stage, upstream = make_stage(embedder), Upstream()
    for _ in range(2):
        ctx, _, _ = await ask(stage, upstream, "Tell me a story", **extra)
        assert ctx.response_headers["x-gateway-cache"] == "bypass"
        assert ctx.decisions[-1].detail == {"reason": reason}
    assert upstream.calls == 2


async def test_sampling_is_cached_when_the_policy_allows_it(embedder) -> None:
    stage, upstream = make_stage(embedder, cache_nondeterministic=True), Upstream()
    await ask(stage, upstream, "Tell me a story", temperature=0.7)
    ctx, _, _ = await ask(stage, upstream, "Tell me a story", temperature=0.7)
    assert ctx.response_headers["x-gateway-cache"] == "hit"
    ctx, _, _ = await ask(stage, upstream, "Tell me a story", temperature=0.2)
    assert ctx.response_headers["x-gateway-cache"] == "miss"  # parameters are part of the key


async def test_refusals_and_tool_requests_are_cached_exactly_only(embedder) -> None:
    stage = make_stage(embedder)

    async def refusing(ctx):
        ctx.response_headers["x-gateway-refused"] = "low_confidence"
        return await Upstream("I could not find this.")(ctx)

    await ask(stage, refusing, "How do I reset my password?")
    ctx, _, text = await ask(stage, Upstream(), "How do I reset my password?")
    assert ctx.response_headers["x-gateway-cache"] == "hit"
    assert ctx.response_headers["x-gateway-refused"] == "low_confidence" and text == "I could not find this."
    ctx, _, _ = await ask(stage, Upstream(), "How can I reset my password?")
    assert ctx.response_headers["x-gateway-cache"] == "miss"

    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    await ask(stage, Upstream(), "Weather in Paris?", tools=tools)
    ctx, _, _ = await ask(stage, Upstream(), "Weather in Paris?", tools=tools)
    assert ctx.response_headers["x-gateway-cache"] == "hit"
    ctx, _, _ = await ask(stage, Upstream(), "What's the weather in Paris?", tools=tools)
    assert ctx.response_headers["x-gateway-cache"] == "miss"


async def test_tool_calls_in_a_stream_are_rebuilt(embedder) -> None:
    stage = make_stage(embedder)
    base = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    async def tool_stream():
        def delta(d, finish=None):
            return encode_event({**base, "choices": [{"index": 0, "delta": d, "finish_reason": finish}]})

        yield delta(
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "wea", "arguments": ""},
                    }
                ],
            }
        )
        yield delta({"tool_calls": [{"index": 0, "function": {"name": "ther", "arguments": '{"city":'}}]})
        yield delta({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]})
        yield delta({}, "tool_calls")
        yield b"data: [DONE]\n\n"

    async def upstream(ctx):
        from gateway.response import GatewayResponse

        return GatewayResponse(stream=tool_stream())

    ctx, _, _ = await ask(stage, upstream, "Weather in Paris?", stream=True)
    ctx, response, _ = await ask(stage, Upstream(), "Weather in Paris?")
    message = client_json(response)["choices"][0]["message"]
    assert ctx.response_headers["x-gateway-cache"] == "hit"
    assert message["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}
    ]
    assert client_json(response)["choices"][0]["finish_reason"] == "tool_calls"


async def test_citations_are_replayed(embedder) -> None:
    stage = make_stage(embedder)

    async def cited(ctx):
        response = await Upstream("See [1].")(ctx)
        completion = response.completion()
        completion.citations = [{"id": 1, "source": "a.md"}]
        response.set_completion(completion)
        return response

    await ask(stage, cited, "What is in a.md?")
    _, response, _ = await ask(stage, Upstream(), "What is in a.md?")
    assert client_json(response)["citations"] == [{"id": 1, "source": "a.md"}]
    ctx = make_ctx("What is in a.md?", stream=True)
    _, chunks, _ = await read_stream(await stage.handle(ctx, Upstream()))
    assert chunks[-1]["citations"] == [{"id": 1, "source": "a.md"}]


async def test_a_store_failure_never_fails_the_answer(embedder) -> None:
    class Broken(MemoryCacheStore):
        async def get(self, tenant, key):
            from gateway.cache.store import CacheUnavailable

            raise CacheUnavailable("down")

    open_stage = make_stage(embedder, Broken())
    ctx, _, text = await ask(open_stage, Upstream(), "Hi?")
    assert text and ctx.response_headers["x-gateway-cache"] == "bypass"
    assert ctx.decisions[-1].action == "unavailable"
    closed = make_stage(embedder, Broken(), on_state_error="fail_closed")
    with pytest.raises(GatewayError) as err:
        await closed.handle(make_ctx("Hi?"), Upstream())
    assert err.value.status == 503 and err.value.code == "cache_unavailable"


def test_policy_fingerprint_ignores_keys_but_not_retrieval() -> None:
    from gateway.policy import Policy

    base = Policy(tenant="t")
    assert policy_fingerprint(base) == policy_fingerprint(Policy(tenant="t", description="x"))
    assert policy_fingerprint(base) != policy_fingerprint(Policy(tenant="t", retrieval={"top_k": 3}))
