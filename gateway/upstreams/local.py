"""The built-in offline model: `local/extractive` answers from the sources in its prompt.

It is no language model. It picks the sentences of the numbered sources ([1] ..., [2] ...)
that best match the question and returns them with [n] citations, labelled as an extractive
answer, so the gateway shows retrieval, citations and refusal end to end with no API key.
Without sources it says so rather than inventing anything. Deterministic: the same prompt
always gives the same answer.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from gateway.config import DeploymentConfig
from gateway.errors import GatewayError, bad_request
from gateway.protocols.model import (
    Choice,
    ChoiceEnd,
    Completion,
    Events,
    Start,
    TextDelta,
    Usage,
    UsageReport,
)
from gateway.protocols.request import GatewayRequest
from gateway.response import GatewayResponse

if TYPE_CHECKING:  # the embedder pulls in onnxruntime; only its type is needed here
    from gateway.retrieval.embedder import Embedder

SOURCE_RE = re.compile(r"^\[(\d+)\][ \t]*(.*?)(?=^\[\d+\][ \t]|\Z)", re.M | re.S)
WORD_RE = re.compile(r"[a-z0-9]+")
SENTENCE_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\[(])|\n{2,}|\n(?=[-*|#])")
STOPWORDS = frozenset(
    "a an the and or of to in on for with is are was were be been it its this that these those what "
    "which who how why when where do does did can could should would i you we they he she my your our "
    "their me us from by as at if not no yes so than then there here about into over under".split()
)
LABEL = "Extractive answer (local/extractive, no language model):"
NO_SOURCES = (
    "I can only answer from retrieved sources, and this request came with none. "
    "(local/extractive is an offline extractive answerer, not a language model.)"
)
MAX_SENTENCES = 3


def _words(text: str) -> set[str]:
    return {w for w in WORD_RE.findall(text.lower()) if w not in STOPWORDS}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def extract_sources(messages: list[dict[str, Any]]) -> dict[int, str]:
    sources: dict[int, str] = {}
    for message in messages:
        if message.get("role") in ("system", "developer"):
            for match in SOURCE_RE.finditer(_text_of(message.get("content"))):
                sources.setdefault(int(match.group(1)), match.group(2).strip())
    return sources


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def extractive_answer(messages: list[dict[str, Any]]) -> str:
    sources = extract_sources(messages)
    if not sources:
        return NO_SOURCES
    question = _words(last_user_text(messages))
    scored: list[tuple[float, int, int, str]] = []
    for number, text in sources.items():
        for position, sentence in enumerate(s.strip() for s in SENTENCE_RE.split(text)):
            words = _words(sentence)
            if not words or sentence.startswith(("Source:", "Title:", "Section:")):
                continue
            overlap = len(question & words)
            if overlap:
                # Favour sentences covering more of the question; earlier sources break ties.
                scored.append((overlap / (len(question) or 1), -number, -position, sentence))
    if not scored:
        return f"{LABEL} none of the {len(sources)} sources mentions the terms of the question."
    scored.sort(reverse=True)
    picked = sorted(scored[:MAX_SENTENCES], key=lambda s: (-s[1], -s[2]))
    lines = [f"{sentence} [{-neg_number}]" for _, neg_number, _, sentence in picked]
    return LABEL + "\n" + "\n".join(lines)


def _usage(messages: list[dict[str, Any]], answer: str) -> Usage:
    return Usage(sum(len(_text_of(m.get("content")).split()) for m in messages), len(answer.split()))


class LocalClient:
    """Serves the `local` provider: extractive chat, and embeddings from the gateway's own embedder."""

    def __init__(self, embedder: Callable[[], Embedder] | None = None) -> None:
        # A loader, not a model: the embedding model is loaded by the first call that needs it.
        self._embedder = embedder

    async def close(self) -> None:
        return None

    async def generate(
        self, deployment: DeploymentConfig, request: GatewayRequest, headers: dict[str, str] | None = None
    ) -> GatewayResponse:
        request.check_translatable("chat")
        messages = request.messages
        answer = extractive_answer(messages)
        completion = Completion(
            id="chatcmpl-local-" + uuid.uuid4().hex[:24],
            model=request.model,
            created=int(time.time()),
            choices=[Choice(0, text=answer, finish_reason="stop")],
            usage=_usage(messages, answer),
        )
        if not request.stream:
            return GatewayResponse.of_completion(completion)
        return GatewayResponse.of_events(_stream(completion, answer))

    async def embeddings(
        self, deployment: DeploymentConfig, request: GatewayRequest, headers: dict[str, str] | None = None
    ) -> GatewayResponse:
        if self._embedder is None:
            raise GatewayError(
                503, "the local embedding model is not loaded", type="server_error", code="model_unavailable"
            )
        body = request.body
        raw_input = body.get("input")
        texts = [raw_input] if isinstance(raw_input, str) else raw_input
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise bad_request(
                "the local embedding model takes 'input' as a string or a list of strings "
                "(token arrays are not supported)",
                param="input",
            )
        if any(not t for t in texts):
            raise bad_request("'input' may not contain empty strings", param="input")
        source = self._embedder
        vectors = await asyncio.to_thread(lambda: source().embed(texts))
        as_base64 = body.get("encoding_format") == "base64"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(vec.astype("<f4").tobytes()).decode()
                if as_base64
                else vec.tolist(),
            }
            for i, vec in enumerate(vectors)
        ]
        tokens = sum(len(t.split()) for t in texts)
        payload = {
            "object": "list",
            "data": data,
            "model": request.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return GatewayResponse(wire="embeddings", raw=orjson.dumps(payload))


async def _stream(completion: Completion, answer: str) -> Events:
    """Word by word, as a model would stream it."""
    yield Start(completion.id, completion.model, completion.created)
    for piece in re.findall(r"\S+\s*", answer):
        yield TextDelta(piece)
    yield ChoiceEnd("stop")
    if completion.usage is not None:
        yield UsageReport(completion.usage)
