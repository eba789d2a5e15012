"""The bundled MiniLM embedder returns sane, normalised sentence vectors."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.retrieval.embedder import Embedder, LocalMiniLMEmbedder, make_embedder


@pytest.fixture(scope="module")
def embedder() -> LocalMiniLMEmbedder:
    return LocalMiniLMEmbedder()


def test_shape_dtype_and_unit_norm(embedder: LocalMiniLMEmbedder) -> None:
    vecs = embedder.embed(["hello world", "a much longer sentence about retrieval augmented generation"])
    assert isinstance(embedder, Embedder)
    assert vecs.shape == (2, embedder.dim) == (2, 384)
    assert vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_empty_input(embedder: LocalMiniLMEmbedder) -> None:
    assert embedder.embed([]).shape == (0, 384)


def test_paraphrases_are_closer_than_unrelated(embedder: LocalMiniLMEmbedder) -> None:
    a, b, c, d = embedder.embed(
        [
            "How do I reset my password?",
            "What are the steps to change my login password?",
            "Giraffes are the tallest land animals.",
            "The quarterly revenue grew by twelve percent.",
        ]
    )
    assert float(a @ b) > 0.6
    assert float(a @ b) > float(a @ c) + 0.3
    assert float(a @ b) > float(a @ d) + 0.3


def test_batching_and_order_do_not_change_vectors(embedder: LocalMiniLMEmbedder) -> None:
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'databases'}" for i in range(40)]
    together = embedder.embed(texts)
    alone = np.stack([embedder.embed([t])[0] for t in texts[:5]])
    # int8 dynamic quantisation scales activations per batch, so allow a tiny difference.
    assert np.all(np.sum(together[:5] * alone, axis=1) > 0.99)
    # rows come back in input order even though batches are built by length
    assert float(together[3] @ embedder.embed([texts[3]])[0]) > 0.99


def test_long_text_is_truncated_not_rejected(embedder: LocalMiniLMEmbedder) -> None:
    vec = embedder.embed(["word " * 5000])
    assert vec.shape == (1, 384) and np.isfinite(vec).all()


def test_make_embedder_rejects_unknown_model() -> None:
    with pytest.raises(ValueError, match="unknown embedding model"):
        make_embedder("no-such-model")
