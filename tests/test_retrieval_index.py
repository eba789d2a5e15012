"""Hybrid per-tenant index: real Chroma (in tmp_path), real BM25, real MiniLM embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.retrieval.confidence import (
    EMPTY_FEATURES,
    FUNCTION_TERMS,
    NO_TERMS,
    QueryTerms,
    compute_features,
    confidence,
    query_terms,
)
from gateway.retrieval.embedder import MINILM_MODEL_ID, LocalMiniLMEmbedder
from gateway.retrieval.index import IndexStore, TenantIndex, make_chroma_client, matches_where
from gateway.retrieval.lexical import LexicalIndex, tokenize
from gateway.retrieval.types import Chunk

DOCS: dict[str, list[tuple[str, str]]] = {
    # doc_id -> [(text, kind)]
    "errors.md": [
        ("Error code ZX-4471 means the upstream certificate expired; renew it with certctl.", "text"),
    ],
    "pets.md": [("The feline dozed peacefully on the rug by the fireplace.", "text")],
    "billing.md": [
        ("Invoices are issued on the first business day of every month.", "text"),
        ("| plan | price |\n| basic | 10 EUR |\n| pro | 30 EUR |", "table"),
    ],
    "deploy.md": [
        ("To deploy the service, build the container image and push it to the registry.", "text"),
        ("```bash\nkubectl rollout restart deployment/gateway\n```", "code"),
    ],
    "garden.md": [("Tomatoes need six to eight hours of direct sunlight each day.", "text")],
}


@pytest.fixture(scope="module")
def embedder() -> LocalMiniLMEmbedder:
    return LocalMiniLMEmbedder()


def make_chunks(doc_id: str, parts: list[tuple[str, str]], content_hash: str = "h1") -> list[Chunk]:
    return [
        Chunk(
            id=f"{doc_id}#{i}",
            doc_id=doc_id,
            text=text,
            source=doc_id,
            title=doc_id.removesuffix(".md"),
            section="",
            page=i + 1 if doc_id == "billing.md" else None,
            content_hash=content_hash,
            kind=kind,
            ordinal=i,
        )
        for i, (text, kind) in enumerate(parts)
    ]


def put(
    index: TenantIndex, emb: LocalMiniLMEmbedder, doc_id: str, parts: list[tuple[str, str]], h: str = "h1"
) -> None:
    chunks = make_chunks(doc_id, parts, h)
    index.upsert_document(doc_id, chunks, emb.embed([c.text for c in chunks]))


def search(index: TenantIndex, emb: LocalMiniLMEmbedder, query: str, top_k: int = 3, **kw: Any) -> Any:
    return index.search(query, emb.embed([query])[0], top_k=top_k, **kw)


@pytest.fixture
def store(tmp_path: Path) -> IndexStore:
    return IndexStore(make_chroma_client(str(tmp_path / "chroma")), MINILM_MODEL_ID)


@pytest.fixture
def filled(store: IndexStore, embedder: LocalMiniLMEmbedder) -> TenantIndex:
    index = store.tenant("acme")
    for doc_id, parts in DOCS.items():
        put(index, embedder, doc_id, parts)
    return index


def test_bm25_only_match_is_found(filled: TenantIndex, embedder: LocalMiniLMEmbedder) -> None:
    res = search(filled, embedder, "ZX-4471")
    top = res.hits[0]
    assert top.chunk.doc_id == "errors.md"
    assert top.bm25_rank == 1 and top.bm25_score is not None and top.bm25_score > 0


def test_dense_only_match_is_found(filled: TenantIndex, embedder: LocalMiniLMEmbedder) -> None:
    # No word (or stem) in common with the pets chunk: only the dense side can find it.
    res = search(filled, embedder, "cat sleeping on a carpet")
    top = res.hits[0]
    assert top.chunk.doc_id == "pets.md"
    assert top.bm25_rank is None and top.dense_rank == 1


def test_hits_carry_chunk_fields_and_fused_order(filled: TenantIndex, embedder: LocalMiniLMEmbedder) -> None:
    res = search(filled, embedder, "how much does the pro plan cost per month", top_k=2)
    assert len(res.hits) == 2
    assert [h.rank for h in res.hits] == [1, 2]
    assert res.hits[0].fused_score >= res.hits[1].fused_score
    assert res.fused_order[:2] == [h.chunk.id for h in res.hits]
    billing = [h.chunk for h in res.hits if h.chunk.doc_id == "billing.md"]
    assert billing and billing[0].page in (1, 2) and billing[0].title == "billing"
    garden = search(filled, embedder, "tomato sunlight").hits[0].chunk
    assert garden.page is None and garden.doc_date is None  # absent optional fields stay None


def test_upsert_replaces_old_chunks(filled: TenantIndex, embedder: LocalMiniLMEmbedder) -> None:
    before = filled.corpus_version()
    put(filled, embedder, "deploy.md", [("Deployments now use the blue green strategy.", "text")], h="h2")
    assert filled.corpus_version() == before + 1
    assert filled.document_hashes()["deploy.md"] == "h2"
    res = search(filled, embedder, "kubectl rollout restart", top_k=10)
    assert all("kubectl" not in h.chunk.text for h in res.hits)
    assert len(filled) == sum(len(p) for p in DOCS.values()) - 1
    # stale generation is gone from Chroma too, not only hidden
    assert filled._col.count() == len(filled)


def test_delete_document(filled: TenantIndex, embedder: LocalMiniLMEmbedder) -> None:
    before = filled.corpus_version()
    filled.delete_document("errors.md")
    assert "errors.md" not in filled.document_hashes()
    assert filled.corpus_version() == before + 1
    res = search(filled, embedder, "ZX-4471 certificate expired", top_k=10)
    assert all(h.chunk.doc_id != "errors.md" for h in res.hits)
    filled.delete_document("never-existed.md")  # a no-op, not an error
    assert filled.corpus_version() == before + 1


def test_filters_apply_to_both_sides(filled: TenantIndex, embedder: LocalMiniLMEmbedder) -> None:
    res = search(filled, embedder, "ZX-4471 certificate", top_k=10, where={"kind": "table"})
    assert res.hits and all(h.chunk.kind == "table" for h in res.hits)
    res = search(filled, embedder, "deploy", top_k=10, where={"doc_id": {"$in": ["deploy.md", "garden.md"]}})
    assert {h.chunk.doc_id for h in res.hits} <= {"deploy.md", "garden.md"}
    assert any(h.bm25_rank is not None for h in res.hits)
    res = search(filled, embedder, "invoices", top_k=10, where={"doc_id": "billing.md", "page": {"$gte": 2}})
    assert [h.chunk.id for h in res.hits] == ["billing.md#1"]
    with pytest.raises(ValueError, match="unsupported filter operator"):
        search(filled, embedder, "x", where={"kind": {"$regex": "t.*"}})


def test_matches_where_semantics() -> None:
    meta = {"kind": "text", "page": 3, "doc_id": "a"}
    assert matches_where(meta, {"kind": "text"})
    assert not matches_where(meta, {"kind": {"$ne": "text"}})
    assert matches_where(meta, {"$or": [{"kind": "table"}, {"page": {"$lt": 5}}]})
    assert not matches_where(meta, {"$and": [{"kind": "text"}, {"page": {"$gt": 5}}]})
    assert not matches_where(meta, {"doc_date": {"$ne": "2020"}})  # absent field matches nothing
    assert not matches_where(meta, {"page": {"$gt": "2"}})  # type mismatch is a non-match


def test_confidence_separates_on_and_off_topic(filled: TenantIndex, embedder: LocalMiniLMEmbedder) -> None:
    on = search(filled, embedder, "What does error code ZX-4471 mean?")
    off = search(filled, embedder, "Who won the 1998 football world cup final?")
    assert 0.0 <= off.confidence < on.confidence <= 1.0


def test_query_terms_match_the_chunk_tokens() -> None:
    texts = ["Invoices are issued monthly by the billing team.", "The cat sat on the mat.", "Billing cats."]
    lexical = LexicalIndex.from_texts(texts)
    tokens = tokenize("How many invoices does the billing team issue for Salesforce?")
    terms = query_terms(lexical, tokens, top_rows=[0])
    # "how", "many", "does" phrase the question: they are no content terms
    content = [t for t in dict.fromkeys(tokens) if t not in FUNCTION_TERMS]
    assert content == ["invoic", "bill", "team", "issu", "salesforc"] and len(terms.idf) == 5
    in_top = set(tokenize(texts[0]))
    assert list(terms.in_top) == [t in in_top for t in content]  # postings agree with tokenising
    assert list(terms.known) == [True, True, True, True, False]  # salesforce occurs nowhere
    assert max(terms.idf) == terms.idf[-1]  # an unknown term weighs like the rarest one


def test_coverage_comes_from_the_top_chunk_that_covers_the_query_best() -> None:
    # Two versions of a policy: the old intro is the closest chunk, the new one holds "2024".
    texts = [
        "Refund policy, effective 1 February 2022.",
        "Refund policy, effective 1 June 2024. Refunds take 5 business days.",
        "The cat sat on the mat.",
    ]
    lexical = LexicalIndex.from_texts(texts)
    tokens = tokenize("How long do refunds take under the 2024 refund policy?")
    content = [t for t in dict.fromkeys(tokens) if t not in FUNCTION_TERMS]
    in_second = set(tokenize(texts[1]))
    best = query_terms(lexical, tokens, top_rows=[0, 1, 2])
    assert list(best.in_top) == [t in in_second for t in content] and sum(best.in_top) > 2
    only_first = query_terms(lexical, tokens, top_rows=[0])
    assert sum(only_first.in_top) < sum(best.in_top)
    # A tie keeps the higher-ranked chunk; no top chunks means nothing is covered.
    assert query_terms(lexical, tokens, top_rows=[1, 1]).in_top == best.in_top
    assert not any(query_terms(lexical, tokens, top_rows=[]).in_top)


def test_unknown_terms_and_coverage_move_confidence() -> None:
    base = dict(dense_ids=["a", "b"], dense_scores=[0.6, 0.3], bm25_ids=["a"])
    covered = compute_features(**base, terms=QueryTerms((1.0, 2.0), (True, True), (True, True)))
    unknown = compute_features(**base, terms=QueryTerms((1.0, 2.0), (True, False), (True, False)))
    assert covered.term_coverage == 1.0 and covered.unknown_terms == 0.0
    assert unknown.term_coverage == pytest.approx(1 / 3) and unknown.unknown_terms == pytest.approx(2 / 3)
    assert confidence(unknown) < confidence(covered)
    assert compute_features([], [], [], NO_TERMS) == EMPTY_FEATURES and confidence(EMPTY_FEATURES) == 0.0


def test_empty_index(store: IndexStore, embedder: LocalMiniLMEmbedder) -> None:
    res = search(store.tenant("nobody"), embedder, "anything")
    assert res.hits == [] and res.confidence == 0.0 and res.corpus_version == 0


def test_tenants_are_isolated(store: IndexStore, filled: TenantIndex, embedder: LocalMiniLMEmbedder) -> None:
    other = store.tenant("other tenant/with odd chars")
    put(other, embedder, "x.md", [("Completely separate corpus about sailing boats.", "text")])
    assert set(other.document_hashes()) == {"x.md"}
    assert "x.md" not in filled.document_hashes()


def test_persistence_across_clients(tmp_path: Path, embedder: LocalMiniLMEmbedder) -> None:
    path = str(tmp_path / "chroma")
    index = IndexStore(make_chroma_client(path), MINILM_MODEL_ID).tenant("acme")
    for doc_id, parts in DOCS.items():
        put(index, embedder, doc_id, parts)
    version, hashes = index.corpus_version(), index.document_hashes()

    reopened = IndexStore(make_chroma_client(path), MINILM_MODEL_ID).tenant("acme")
    assert reopened.corpus_version() == version
    assert reopened.document_hashes() == hashes
    assert search(reopened, embedder, "ZX-4471").hits[0].chunk.doc_id == "errors.md"
    assert reopened.stale_reason(MINILM_MODEL_ID) is None
    assert "other-model" in (reopened.stale_reason("other-model") or "")


def test_interrupted_write_keeps_previous_version(tmp_path: Path, embedder: LocalMiniLMEmbedder) -> None:
    path = str(tmp_path / "chroma")
    index = IndexStore(make_chroma_client(path), MINILM_MODEL_ID).tenant("acme")
    put(index, embedder, "deploy.md", DOCS["deploy.md"])
    # Simulate a crash half-way through replacing deploy.md with 3 chunks: only one was written.
    new = make_chunks("deploy.md", [("new one", "text"), ("new two", "text"), ("new three", "text")], "h2")
    gen = index.corpus_version() + 1
    index._write(
        [f"{new[0].id}@{gen}"],
        [embedder.embed([new[0].text])[0]],
        [new[0].text],
        [{**_meta_of(new[0], gen, 3)}],
    )
    reopened = IndexStore(make_chroma_client(path), MINILM_MODEL_ID).tenant("acme")
    assert reopened.document_hashes() == {"deploy.md": "h1"}
    assert {h.chunk.text for h in search(reopened, embedder, "new one", top_k=5).hits} == {
        t for t, _ in DOCS["deploy.md"]
    }
    assert reopened._col.count() == 2  # the orphaned half-write was cleaned up


def _meta_of(chunk: Chunk, gen: int, n: int) -> dict[str, Any]:
    from gateway.retrieval.index import _chunk_metadata

    return _chunk_metadata(chunk, gen, n)


def test_rebuild_swaps_and_crash_keeps_old(tmp_path: Path, embedder: LocalMiniLMEmbedder) -> None:
    path = str(tmp_path / "chroma")
    store = IndexStore(make_chroma_client(path), MINILM_MODEL_ID)
    live = store.tenant("acme")
    put(live, embedder, "garden.md", DOCS["garden.md"])

    # A rebuild that never commits (crash): the old corpus stays live for a new process.
    abandoned = store.begin_rebuild("acme")
    put(abandoned, embedder, "pets.md", DOCS["pets.md"])
    fresh = IndexStore(make_chroma_client(path), MINILM_MODEL_ID)
    assert set(fresh.tenant("acme").document_hashes()) == {"garden.md"}

    # A completed rebuild replaces it, with a corpus version above the old one.
    rebuilt = fresh.begin_rebuild("acme")  # also drops the abandoned build
    put(rebuilt, embedder, "pets.md", DOCS["pets.md"])
    fresh.commit_rebuild("acme", rebuilt)
    assert fresh.tenant("acme") is rebuilt
    assert rebuilt.corpus_version() > live.corpus_version()
    names = [c.name for c in fresh._client.list_collections()]
    assert names == [rebuilt.collection_name]
    again = IndexStore(make_chroma_client(path), MINILM_MODEL_ID).tenant("acme")
    assert set(again.document_hashes()) == {"pets.md"}


def test_batch_apply_and_validation(store: IndexStore, embedder: LocalMiniLMEmbedder) -> None:
    index = store.tenant("acme")
    batch = []
    for doc_id, parts in DOCS.items():
        chunks = make_chunks(doc_id, parts)
        batch.append((doc_id, chunks, embedder.embed([c.text for c in chunks])))
    assert index.apply(upserts=batch) == 1  # one change, one version bump
    assert len(index.document_hashes()) == len(DOCS)
    with pytest.raises(ValueError, match="embeddings"):
        index.upsert_document("pets.md", make_chunks("pets.md", DOCS["pets.md"]), np.zeros((3, 384)))
    assert index.corpus_version() == 1


def test_fusion_methods() -> None:
    from gateway.retrieval.fusion import FusionParams, fuse

    dense_ids, dense_scores = ["a", "b", "c"], [0.9, 0.5, 0.4]
    bm25_ids, bm25_scores = ["c", "b"], [12.0, 6.0]
    convex = fuse(dense_ids, dense_scores, bm25_ids, bm25_scores, FusionParams(alpha=0.5))
    assert convex["a"] == pytest.approx(0.5)  # best dense, no BM25
    assert convex["c"] == pytest.approx(0.5)  # worst dense, best BM25
    assert convex["b"] == pytest.approx(0.5 * 0.2 + 0.5 * 0.5)
    rrf = fuse(dense_ids, dense_scores, bm25_ids, bm25_scores, FusionParams(method="rrf", k=60))
    assert rrf["b"] == pytest.approx(1 / 62 + 1 / 62)
    assert max(rrf, key=rrf.__getitem__) == "c"  # 1/63 + 1/61 beats b
    with pytest.raises(ValueError):
        FusionParams(method="max")


def test_a_change_tokenises_only_the_changed_chunks(
    store: IndexStore, embedder: LocalMiniLMEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.retrieval.lexical as lexical_module

    index = store.tenant("t")
    for doc_id, parts in DOCS.items():
        put(index, embedder, doc_id, parts)
    tokenised: list[str] = []
    real = lexical_module.tokenize

    def counting(text: str) -> list[str]:
        tokenised.append(text)
        return real(text)

    monkeypatch.setattr(lexical_module, "tokenize", counting)
    put(index, embedder, "garden.md", [("Cucumbers want warm soil and plenty of water.", "text")], h="h2")
    assert tokenised == ["Cucumbers want warm soil and plenty of water."]
    # The other documents are still found by their words, the replaced one only by its new words.
    assert search(index, embedder, "ZX-4471 certificate").hits[0].chunk.doc_id == "errors.md"
    assert search(index, embedder, "cucumbers soil").hits[0].chunk.doc_id == "garden.md"
    lexical_scores = index._snap.lexical.scores(real("tomatoes sunlight"))
    assert not lexical_scores.any()  # the old words stay in the vocabulary but match no chunk


def test_words_of_a_deleted_document_count_as_unknown(
    store: IndexStore, embedder: LocalMiniLMEmbedder
) -> None:
    index = store.tenant("t")
    for doc_id, parts in DOCS.items():
        put(index, embedder, doc_id, parts)
    before = search(index, embedder, "How much sunlight do tomatoes need?")
    index.delete_document("garden.md")
    after = search(index, embedder, "How much sunlight do tomatoes need?")
    assert all(h.chunk.doc_id != "garden.md" for h in after.hits)
    assert after.features.unknown_terms > before.features.unknown_terms  # tomato, sunlight: df 0 now
    rebuilt = TenantIndex(index._col)  # a fresh vocabulary, as a restart or another replica has
    fresh = search(rebuilt, embedder, "How much sunlight do tomatoes need?")
    assert fresh.features == after.features and [h.chunk.id for h in fresh.hits] == [
        h.chunk.id for h in after.hits
    ]


def test_bm25_scores_equal_bm25s() -> None:
    """Our vectorised build gives the scores bm25s computes (Lucene BM25, k1 1.5, b 0.75)."""
    import bm25s

    from gateway.retrieval.lexical import BM25_B, BM25_K1

    texts = [text for parts in DOCS.values() for text, _ in parts] + [
        "Invoices, invoices and more invoices: the billing team issues them monthly.",
        "",  # a chunk without tokens
        "The registry keeps every container image; deploy pulls from the registry.",
    ]
    ours = LexicalIndex.from_texts(texts)
    reference = bm25s.BM25(k1=BM25_K1, b=BM25_B)
    reference.index([tokenize(t) or ["\x00EMPTY"] for t in texts], show_progress=False)
    for query in (
        "invoices billing month",
        "deploy the container registry registry",
        "cat rug",
        "nothing here",
    ):
        tokens = tokenize(query)
        expected = np.asarray(
            reference.get_scores_from_ids(reference.get_tokens_ids(tokens)), dtype=np.float32
        )
        got = ours.scores(tokens)
        assert got.shape == (len(texts),)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert list(ours.postings("registri")) == [i for i, t in enumerate(texts) if "registry" in t]
    assert len(ours.postings("unknownword")) == 0


def test_words_of_deleted_documents_are_forgotten_once_they_dominate(
    store: IndexStore, embedder: LocalMiniLMEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.retrieval.lexical as lexical_module

    monkeypatch.setattr(lexical_module, "MIN_DEAD_WORDS_TO_COMPACT", 5)
    index = store.tenant("t")
    put(index, embedder, "errors.md", DOCS["errors.md"])
    for i in range(6):  # documents full of words no other document has, each deleted again
        words = " ".join(f"zq{i}word{j}" for j in range(4))
        put(index, embedder, f"tmp{i}.md", [(f"Temporary notes: {words}.", "text")])
        index.delete_document(f"tmp{i}.md")
    vocabulary = index._vocabulary
    assert len(vocabulary) < 2 * index._snap.lexical.live_words + 5  # compacted along the way
    # Ids were renumbered consistently: search and the postings still agree with the text.
    assert search(index, embedder, "ZX-4471 certificate").hits[0].chunk.doc_id == "errors.md"
    assert list(index._snap.lexical.postings("certif")) == [0]
    put(index, embedder, "garden.md", DOCS["garden.md"])
    assert search(index, embedder, "tomatoes sunlight").hits[0].chunk.doc_id == "garden.md"
