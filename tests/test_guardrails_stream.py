"""Streaming output scanning: nothing matching a rule leaks, however the text is cut into chunks."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gateway.context import RequestContext
from gateway.guardrails.settings import OutputGuardrailsPolicy
from gateway.response import GatewayResponse
from middleware.output_guardrails import OutputGuardrailsStage, build_guard
from tests.test_guardrails_stages import client_stream, collect, make_ctx, sse

SECRET = "sk-proj-" + "Zq7Xw2Pl9Mn4Bv6Ct1" * 3
TEXT = f"Sure. Use the key {SECRET} in the header, then retry. Contact ann@corp.example if stuck."


def stage(**settings: Any) -> OutputGuardrailsStage:
    policy = OutputGuardrailsPolicy.model_validate({"enabled": True, **settings})
    return OutputGuardrailsStage(policy, build_guard(policy))


def cuts(text: str, rng: random.Random, max_piece: int = 7) -> list[str]:
    pieces, i = [], 0
    while i < len(text):
        n = rng.randint(1, max_piece)
        pieces.append(text[i : i + n])
        i += n
    return pieces


async def run(st: OutputGuardrailsStage, pieces: list[str]) -> tuple[str, list[dict[str, Any]], bool]:
    ctx = make_ctx("q", stream=True)

    async def upstream(c: RequestContext) -> GatewayResponse:
        return GatewayResponse(stream=sse(pieces))

    response = await st.handle(ctx, upstream)
    return await collect(client_stream(ctx, response))


@pytest.mark.parametrize("seed", range(20))
async def test_split_secret_never_reaches_the_client(seed: int) -> None:
    text, chunks, done = await run(stage(), cuts(TEXT, random.Random(seed)))
    assert done
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    # Not the key, nor any 8-character piece of it.
    assert all(SECRET[i : i + 8] not in text for i in range(len(SECRET) - 8))
    assert text == "" or TEXT.startswith(text)


@pytest.mark.parametrize("seed", range(10))
async def test_redacted_stream_is_the_redacted_text(seed: int) -> None:
    settings = {"pii": {"entities": {"SECRET": "redact", "EMAIL": "redact"}}}
    text, chunks, done = await run(stage(**settings), cuts(TEXT, random.Random(seed)))
    assert done and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert text == (
        "Sure. Use the key [REDACTED:SECRET] in the header, then retry. Contact [REDACTED:EMAIL] if stuck."
    )


async def test_denied_keyword_split_across_chunks_blocks() -> None:
    settings = {"denied": [{"name": "codename", "keywords": ["project falcon"]}]}
    text, chunks, _ = await run(stage(**settings), ["The plan is Pro", "ject Fal", "con, launching soon."])
    assert "Pro" not in text and chunks[-1]["choices"][0]["finish_reason"] == "content_filter"


@pytest.mark.parametrize("holdback", [16, 32, 64])
def test_holdback_never_exceeds_the_configured_chars(holdback: int) -> None:
    guard = build_guard(
        OutputGuardrailsPolicy(
            stream_holdback_chars=holdback,
            pii={
                "entities": {
                    "SECRET": "redact",
                    "EMAIL": "redact",
                    "PHONE": "redact",
                    "CREDIT_CARD": "redact",
                }
            },
        )
    )
    text = "Numbers: 4111 1111 1111 1111, +44 20 7946 0958, " * 3 + "x" * 200 + " 1234567890 " * 20 + TEXT
    for seed in range(5):
        scanner = guard.scanner()
        for piece in cuts(text, random.Random(seed), 11):
            step = scanner.feed(piece)
            assert step.blocked is None
            assert len(scanner.pending) <= holdback


def test_plain_prose_is_released_word_by_word() -> None:
    scanner = build_guard(OutputGuardrailsPolicy()).scanner()
    released = [scanner.feed(p).text for p in ["The", " capital", " of", " France", " is", " Paris."]]
    # Only the last, possibly unfinished word is held (two after a capitalised word, which could be
    # a street name before its house number), not a fixed 64-character window.
    assert released[:3] == ["", "", "The capital "]
    assert "".join(released) + scanner.flush().text == "The capital of France is Paris."


async def test_role_chunk_is_not_held() -> None:
    text, chunks, _ = await run(stage(), ["Hello", " there."])
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    assert text == "Hello there."
