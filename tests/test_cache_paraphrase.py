"""The check after cosine similarity: a paraphrase must ask the same thing to be served an answer."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from gateway.cache.normalize import normalize_question
from gateway.cache.paraphrase import mismatch, question_shape
from gateway.cache.redis_store import RedisCacheStore
from gateway.cache.settings import CachePolicy
from gateway.cache.store import CacheStore, MemoryCacheStore, make_cache_store
from gateway.cache.vectors import VectorIndex
from gateway.retrieval.embedder import LocalMiniLMEmbedder
from middleware.cache import CacheStage
from tests.conftest import PrivateRedis
from tests.test_cache_support import Upstream, answer_text, make_ctx


def differs(a: str, b: str) -> str | None:
    return mismatch(question_shape(a), question_shape(b))


@pytest.mark.parametrize(
    ("cached", "new"),
    [
        ("How can I become physically strong?", "How do I become physically strong?"),
        ("What is the refund policy for annual plans?", "What is your refund policy for annual plans?"),
        ("What parts should I upgrade on my PC?", "What part should I upgrade on my PC?"),
        ("What is the purpose of life ?", "what is the purpose of life"),
        ("How do I overcome my inferiority complex?", "How do I overcome my inferiority complex ?"),
        (
            "Can anyone help translating this Arabic text?",
            "Can anyone help with translating this Arabic text?",
        ),
        ("Why isn't my order shipped?", "Why is my order not shipped?"),
        ("What's the speed limit in Zone B?", "What is the speed limit within Zone B?"),
        ("I'm locked out, what should I do?", "I am locked out, what should I do?"),
        ("How to reset a password?", "How do I reset my password?"),
    ],
)
def test_rewordings_that_keep_the_details_pass(cached: str, new: str) -> None:
    assert differs(cached, new) is None
    assert differs(new, cached) is None


@pytest.mark.parametrize(
    ("cached", "new", "reason"),
    [
        (
            "When is the chart preparation time for train no. 19708?",
            "When is the chart preparation time for train no. 19707?",
            "numbers differ",
        ),
        ("What do Croats think of Turks?", "What do Turks think of Croats?", "word order differs"),
        (
            "How do you convert current source to voltage source?",
            "How do you convert voltage source to current source?",
            "word order differs",
        ),
        (
            "How many 3 digit numbers can be formed if no repetitions are allowed?",
            "How many 3 digit numbers can be formed if repetitions are allowed?",
            "negation differs",
        ),
        ("Why is it not raining?", "Why is it not not raining?", "negation differs"),
        ("Can Islam be reformed?", "How can Islam be reformed?", "question type differs"),
        ("Can I commit suicide?", "Should I commit suicide?", "question type differs"),
        ("How do I cancel my plan?", "How much does it cost to cancel my plan?", "question type differs"),
        ("What do you think of Delhi?", "What do we think of Delhi?", "addressee differs"),
        ("How do you reset the router?", "How do I reset the router?", "addressee differs"),
        (
            "What is a good rehab center in Marshall County AL?",
            "What is a good rehab center in Washington County AL?",
            "words differ: marshal, washington",
        ),
        (
            "What is the difference between C and C++?",
            "What is the difference between C and C#?",
            "words differ",
        ),
        ('What does "无语" mean?', 'What does "装逼" mean?', "words differ"),
        ("What does a mentalist do and how?", "What does a mentalist do?", "question type differs"),
    ],
)
def test_a_changed_detail_is_caught(cached: str, new: str, reason: str) -> None:
    found = differs(cached, new)
    assert found is not None and found.startswith(reason), found
    assert differs(new, cached) is not None


def test_index_returns_the_k_nearest_live_entries_of_the_scope() -> None:
    index = VectorIndex(capacity=8)
    rows = np.eye(4, dtype=np.float32)
    query = np.array([0.9, 0.4, 0.1, 0.0], dtype=np.float32)
    index.add("a", "aa" * 8, rows[0], expires_at=100)
    index.add("b", "aa" * 8, rows[1], expires_at=100)
    index.add("c", "aa" * 8, rows[2], expires_at=100)
    index.add("other-scope", "bb" * 8, query / np.linalg.norm(query), expires_at=100)
    index.add("expired", "aa" * 8, query / np.linalg.norm(query), expires_at=10)
    found = index.nearest("aa" * 8, query, now=50, k=2)
    assert [(f.entry_id, round(f.similarity, 2)) for f in found] == [("a", 0.9), ("b", 0.4)]
    assert [f.entry_id for f in index.nearest("aa" * 8, query, now=50, k=10)] == ["a", "b", "c"]
    assert index.nearest("cc" * 8, query, now=50, k=3) == []


# -- through the stage -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder() -> LocalMiniLMEmbedder:
    return LocalMiniLMEmbedder()


async def ask(stage: CacheStage, upstream: Upstream, question: str) -> tuple[Any, str]:
    ctx = make_ctx(question)
    text = await answer_text(await stage.handle(ctx, upstream))
    await stage.drain()
    return ctx, text


async def test_a_near_identical_question_with_another_number_is_not_served(embedder) -> None:
    stage = CacheStage(CachePolicy(enabled=True), MemoryCacheStore(), embedder)
    upstream = Upstream("Four hours before departure.")
    await ask(stage, upstream, "When is the chart preparation time for train no. 19708?")
    ctx, _ = await ask(stage, upstream, "When is the chart preparation time for train no. 19707?")
    # Cosine alone would serve it: the two are closer than the threshold demands.
    assert float(ctx.response_headers["x-gateway-cache-similarity"]) >= stage.threshold
    assert ctx.response_headers["x-gateway-cache"] == "miss" and upstream.calls == 2
    assert ctx.decisions[-1].detail["rejected"] == "numbers differ"

    cosine_only = CacheStage(CachePolicy(enabled=True, paraphrase_check="off"), MemoryCacheStore(), embedder)
    await ask(cosine_only, upstream, "When is the chart preparation time for train no. 19708?")
    ctx, _ = await ask(cosine_only, upstream, "When is the chart preparation time for train no. 19707?")
    assert ctx.response_headers["x-gateway-cache"] == "semantic-hit"


class PresetEmbedder:
    """Vectors chosen by the test, so which entry is nearest is known exactly."""

    model_id = "preset"
    dim = 3

    def __init__(self, vectors: dict[str, Sequence[float]]) -> None:
        self.vectors = {k: np.asarray(v, dtype=np.float32) / np.linalg.norm(v) for k, v in vectors.items()}
        # The stage embeds a question's normal form.
        self._by_normal_form = {normalize_question(k): v for k, v in self.vectors.items()}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self._by_normal_form[t] for t in texts])


SWAPPED, SAME, QUERY = (
    "What do Croats think of Turks?",
    "What do the Turks think of Croats?",
    ("What do Turks think about Croats?"),
)
PRESET = PresetEmbedder({SWAPPED: [1, 0.1, 0], SAME: [1, 0.2, 0], QUERY: [1, 0.11, 0]})


async def serves_the_paraphrase_behind_a_rejected_nearer_entry(store: CacheStore, other: CacheStore) -> None:
    fill = CacheStage(CachePolicy(enabled=True, similarity_threshold=0.99), store, PRESET)
    await ask(fill, Upstream("Croats on Turks."), SWAPPED)
    await ask(fill, Upstream("Turks on Croats."), SAME)
    stage = CacheStage(CachePolicy(enabled=True, similarity_threshold=0.99), other, PRESET)
    upstream = Upstream("fresh")
    ctx, text = await ask(stage, upstream, QUERY)
    assert ctx.response_headers["x-gateway-cache"] == "semantic-hit", ctx.decisions
    assert text == "Turks on Croats." and upstream.calls == 0
    # The header names the similarity of the entry served, not of the nearer one passed over.
    served = float(PRESET.vectors[SAME] @ PRESET.vectors[QUERY])
    assert ctx.response_headers["x-gateway-cache-similarity"] == f"{served:.4f}"


async def test_the_next_candidate_is_tried_when_the_nearest_asks_something_else() -> None:
    store = MemoryCacheStore()
    await serves_the_paraphrase_behind_a_rejected_nearer_entry(store, store)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
async def test_the_next_candidate_is_tried_across_redis_replicas(private_redis: PrivateRedis) -> None:
    a, b = make_cache_store(private_redis.url), make_cache_store(private_redis.url)
    assert isinstance(a, RedisCacheStore) and isinstance(b, RedisCacheStore)
    try:
        await serves_the_paraphrase_behind_a_rejected_nearer_entry(a, b)
    finally:
        await a.close()
        await b.close()
