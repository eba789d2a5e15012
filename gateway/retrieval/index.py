"""Per-tenant hybrid index: dense vectors in Chroma, BM25 in memory, fused (see fusion.py).

Storage layout
- One Chroma collection per tenant and build: ``t_<tenant>_<hash>__v<n>``. A rebuild writes a new
  collection marked ``state=building`` and flips it to ``live`` with one metadata write; the older
  one is dropped afterwards. A crash mid-rebuild leaves the previous collection live.
- A chunk is stored under ``<chunk.id>@<generation>``; its metadata carries the generation and the
  document's chunk count. Replacing a document writes the new generation first, then swaps the
  in-memory snapshot, then deletes the old generation. On load the newest *complete* generation of
  each document wins, so a crash mid-write leaves the previous version searchable.
- Searches read one immutable in-memory snapshot (chunks, metadata, BM25), swapped atomically after
  each change: readers never see half a document. Dense hits whose record is not in the snapshot
  (written but not yet committed, or about to be deleted) are dropped.

Chroma never embeds anything itself here: every collection is opened with embedding_function=None
and all vectors are passed in, because its default embedding function downloads a model.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from gateway.errors import VectorStoreUnavailable
from gateway.retrieval.confidence import (
    COVERAGE_CHUNKS,
    ConfidenceFeatures,
    compute_features,
    confidence,
    query_terms,
)
from gateway.retrieval.fusion import FusionParams, fuse
from gateway.retrieval.lexical import LexicalIndex, Vocabulary, tokenize
from gateway.retrieval.types import CHUNK_SCHEMA_VERSION, Chunk

log = logging.getLogger(__name__)

_PAGE_SIZE = 5000  # Chroma get() page when loading a collection


def make_chroma_client(path: str | None, url: str | None = None, wait_s: float = 0.0) -> Any:
    """HttpClient when `url` (http://host:port) is set, else an embedded PersistentClient at `path`.

    A server that is not up yet (a gateway started alongside it) is retried for `wait_s` seconds.
    """
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)  # telemetry would try to reach the network
    if url:
        m = re.fullmatch(r"(https?)://([^:/]+)(?::(\d+))?/?", url)
        if not m:
            raise ValueError(f"chroma url must look like http://host:port, got {url!r}")
        scheme, host, port = m.groups()
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return chromadb.HttpClient(
                    host=host,
                    port=int(port or (443 if scheme == "https" else 8000)),
                    ssl=scheme == "https",
                    settings=settings,
                )
            except Exception as exc:  # chromadb raises ValueError, httpx errors, ... for "not there"
                left = deadline - time.monotonic()
                if left <= 0:
                    raise VectorStoreUnavailable(
                        f"the Chroma server at {url} did not answer within {wait_s:g} s ({exc}). "
                        "Start it (chroma run --path DIR --host HOST --port PORT), fix "
                        "vector_store.url in gateway.yaml, or remove it to use the embedded store."
                    ) from exc
                log.warning("waiting for the Chroma server at %s (%.0f s left): %s", url, left, exc)
                time.sleep(min(2.0, left))
    if not path:
        raise ValueError("either a chroma path or a chroma url is needed")
    return chromadb.PersistentClient(path=path, settings=settings)


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(slots=True)
class Hit:
    chunk: Chunk
    dense_score: float | None  # cosine similarity, None when dense retrieval did not return it
    dense_rank: int | None  # 1-based
    bm25_score: float | None
    bm25_rank: int | None
    fused_score: float
    rank: int  # 1-based position in the fused order


@dataclass(slots=True)
class RetrievalResult:
    hits: list[Hit]  # the top_k of the fused order
    confidence: float  # [0, 1]: how likely the hits can answer the query (see confidence.py)
    corpus_version: int
    fused_order: list[str] = field(default_factory=list)  # chunk ids of every fused candidate
    features: ConfidenceFeatures | None = None


# ---------------------------------------------------------------------------------------------
# Chunk <-> Chroma record

_GEN = "_gen"
_NCHUNKS = "_n_chunks"
_CHUNK_ID = "chunk_id"


def _record_id(chunk_id: str, gen: int) -> str:
    return f"{chunk_id}@{gen}"


def _chunk_metadata(chunk: Chunk, gen: int, n_chunks: int) -> dict[str, str | int]:
    # Chroma rejects None values: optional fields are simply left out and read back as None.
    meta: dict[str, str | int] = {
        _CHUNK_ID: chunk.id,
        "doc_id": chunk.doc_id,
        "source": chunk.source,
        "title": chunk.title,
        "section": chunk.section,
        "content_hash": chunk.content_hash,
        "kind": chunk.kind,
        "ordinal": chunk.ordinal,
        _GEN: gen,
        _NCHUNKS: n_chunks,
    }
    if chunk.page is not None:
        meta["page"] = chunk.page
    if chunk.doc_date is not None:
        meta["doc_date"] = chunk.doc_date
    return meta


def _chunk_from_record(text: str, meta: Mapping[str, Any]) -> Chunk:
    page = meta.get("page")
    doc_date = meta.get("doc_date")
    return Chunk(
        id=str(meta[_CHUNK_ID]),
        doc_id=str(meta["doc_id"]),
        text=text,
        source=str(meta.get("source", "")),
        title=str(meta.get("title", "")),
        section=str(meta.get("section", "")),
        page=int(page) if page is not None else None,
        doc_date=str(doc_date) if doc_date is not None else None,
        content_hash=str(meta.get("content_hash", "")),
        kind=str(meta.get("kind", "text")),
        ordinal=int(meta.get("ordinal", 0)),
    )


# ---------------------------------------------------------------------------------------------
# Metadata filters: Chroma's `where` dialect, evaluated in Python for the BM25 side

_OPS = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
    "$in": lambda a, b: a in b,
    "$nin": lambda a, b: a not in b,
}


def matches_where(meta: Mapping[str, Any], where: Mapping[str, Any]) -> bool:
    """Does a chunk's metadata satisfy a Chroma-style filter ({"kind": "table"}, $and/$or, $in...)?

    A field the chunk lacks (e.g. page of an HTML chunk) matches no condition, as in Chroma.
    """
    for key, cond in where.items():
        if key == "$and":
            if not all(matches_where(meta, c) for c in cond):
                return False
        elif key == "$or":
            if not any(matches_where(meta, c) for c in cond):
                return False
        else:
            if key not in meta:
                return False
            value = meta[key]
            if isinstance(cond, Mapping):
                for op, operand in cond.items():
                    fn = _OPS.get(op)
                    if fn is None:
                        raise ValueError(f"unsupported filter operator {op!r}")
                    try:
                        if not fn(value, operand):
                            return False
                    except TypeError:  # e.g. comparing a string with an int
                        return False
            elif value != cond:
                return False
    return True


def _validate_where(where: Mapping[str, Any]) -> None:
    """Reject operators we cannot evaluate on the BM25 side before Chroma sees them."""
    for key, cond in where.items():
        if key in ("$and", "$or"):
            if not isinstance(cond, list) or not cond:
                raise ValueError(f"{key} needs a non-empty list of filters")
            for c in cond:
                _validate_where(c)
        elif key.startswith("$"):
            raise ValueError(f"unsupported filter operator {key!r}")
        elif isinstance(cond, Mapping):
            for op in cond:
                if op not in _OPS:
                    raise ValueError(f"unsupported filter operator {op!r}")


def _chroma_where(where: Mapping[str, Any]) -> dict[str, Any]:
    # Chroma wants exactly one key per dict level: several top-level fields become an explicit $and.
    if len(where) <= 1:
        return dict(where)
    return {"$and": [{k: v} for k, v in where.items()]}


# ---------------------------------------------------------------------------------------------
# Snapshot


@dataclass(frozen=True, slots=True)
class _Snapshot:
    record_ids: list[str]  # row i of the BM25 index
    chunks: list[Chunk]
    metas: list[dict[str, Any]]
    row_of: dict[str, int]  # record id -> row
    doc_records: dict[str, list[str]]  # doc_id -> its live record ids
    doc_hashes: dict[str, str]
    lexical: LexicalIndex
    token_ids: list[np.ndarray]  # row i's BM25 tokens as ids of the tenant's vocabulary
    corpus_version: int

    @staticmethod
    def build(
        rows: Iterable[tuple[str, Chunk, dict[str, Any]]],
        corpus_version: int,
        vocabulary: Vocabulary,
        previous: _Snapshot | None = None,
    ) -> _Snapshot:
        """The snapshot of `rows`; chunks already in `previous` keep their tokens (no re-tokenising)."""
        record_ids: list[str] = []
        chunks: list[Chunk] = []
        metas: list[dict[str, Any]] = []
        token_ids: list[np.ndarray] = []
        doc_records: dict[str, list[str]] = {}
        doc_hashes: dict[str, str] = {}
        for rid, chunk, meta in rows:
            record_ids.append(rid)
            chunks.append(chunk)
            metas.append(meta)
            row = previous.row_of.get(rid) if previous is not None else None
            if previous is not None and row is not None:
                token_ids.append(previous.token_ids[row])
            else:
                token_ids.append(vocabulary.encode(chunk.text))
            doc_records.setdefault(chunk.doc_id, []).append(rid)
            doc_hashes[chunk.doc_id] = chunk.content_hash
        return _Snapshot(
            record_ids=record_ids,
            chunks=chunks,
            metas=metas,
            row_of={rid: i for i, rid in enumerate(record_ids)},
            doc_records=doc_records,
            doc_hashes=doc_hashes,
            lexical=LexicalIndex(token_ids, vocabulary),
            token_ids=token_ids,
            corpus_version=corpus_version,
        )

    def rows(
        self, skip_docs: set[str] | frozenset[str] = frozenset()
    ) -> Iterable[tuple[str, Chunk, dict[str, Any]]]:
        for rid, chunk, meta in zip(self.record_ids, self.chunks, self.metas, strict=True):
            if chunk.doc_id not in skip_docs:
                yield rid, chunk, meta


# ---------------------------------------------------------------------------------------------
# Tenant index


class TenantIndex:
    """The searchable corpus of one tenant, backed by one Chroma collection."""

    def __init__(self, collection: Any, fusion: FusionParams | None = None) -> None:
        self._col = collection
        self._fusion = fusion or FusionParams()
        self._lock = threading.Lock()  # one writer at a time; readers never take it
        meta = dict(collection.metadata or {})
        self._meta = meta
        self._vocabulary = Vocabulary()
        self._snap = self._load(int(meta.get("corpus_version", 0)))

    # -- identity and health ------------------------------------------------------------------

    @property
    def collection_name(self) -> str:
        return str(self._col.name)

    @property
    def embedding_model(self) -> str:
        return str(self._meta.get("embedding_model", ""))

    def stale_reason(self, embedding_model: str) -> str | None:
        """Why this index must be rebuilt (`rag-gateway reindex`), or None when it is current."""
        schema = int(self._meta.get("chunk_schema_version", -1))
        if schema != CHUNK_SCHEMA_VERSION:
            return f"chunk schema {schema} != current {CHUNK_SCHEMA_VERSION}"
        if self.embedding_model != embedding_model:
            return f"embedded with {self.embedding_model!r}, configured model is {embedding_model!r}"
        return None

    def corpus_version(self) -> int:
        return self._snap.corpus_version

    def document_hashes(self) -> dict[str, str]:
        return dict(self._snap.doc_hashes)

    def __len__(self) -> int:
        return len(self._snap.record_ids)

    # -- writes -------------------------------------------------------------------------------

    def upsert_document(self, doc_id: str, chunks: list[Chunk], embeddings: np.ndarray) -> None:
        self.apply(upserts=[(doc_id, chunks, embeddings)])

    def delete_document(self, doc_id: str) -> None:
        self.apply(deletes=[doc_id])

    def apply(
        self,
        upserts: Iterable[tuple[str, list[Chunk], np.ndarray]] = (),
        deletes: Iterable[str] = (),
    ) -> int:
        """Replace and delete documents as one change; returns the new corpus version.

        Batch many documents into one call during ingest: BM25 is rebuilt once per call.
        A document upserted with no chunks is deleted.
        """
        upserts = list(upserts)
        deletes = set(deletes)
        with self._lock:
            old = self._snap
            gen = old.corpus_version + 1
            ids: list[str] = []
            vectors: list[np.ndarray] = []
            docs: list[str] = []
            metas: list[dict[str, Any]] = []
            new_rows: list[tuple[str, Chunk, dict[str, Any]]] = []
            # Deleting (or upserting nothing for) an unknown document changes nothing: no version bump.
            touched: set[str] = {d for d in deletes if d in old.doc_records}
            for doc_id, chunks, embeddings in upserts:
                if chunks or doc_id in old.doc_records:
                    touched.add(doc_id)
                embeddings = np.asarray(embeddings, dtype=np.float32)
                if embeddings.shape[0] != len(chunks):
                    raise ValueError(f"{doc_id}: {len(chunks)} chunks but {embeddings.shape[0]} embeddings")
                for chunk, vec in zip(chunks, embeddings, strict=True):
                    if chunk.doc_id != doc_id:
                        raise ValueError(f"chunk {chunk.id} belongs to {chunk.doc_id!r}, not {doc_id!r}")
                    rid = _record_id(chunk.id, gen)
                    meta = _chunk_metadata(chunk, gen, len(chunks))
                    ids.append(rid)
                    vectors.append(vec)
                    docs.append(chunk.text)
                    metas.append(meta)
                    new_rows.append((rid, chunk, meta))
            if not touched:
                return old.corpus_version
            if len(set(ids)) != len(ids):
                raise ValueError("duplicate chunk ids in one change")
            # 1. New generation first: until the snapshot swap nobody reads it.
            self._write(ids, vectors, docs, metas)
            # 2. Persist the version, then swap the snapshot readers use.
            self._set_meta(corpus_version=gen)
            new_snap = _Snapshot.build(
                [*old.rows(skip_docs=touched), *new_rows], gen, self._vocabulary, previous=old
            )
            renumbered = self._vocabulary.compact(new_snap.token_ids, new_snap.lexical.live_words)
            if renumbered is not None:
                new_snap = replace(
                    new_snap, lexical=LexicalIndex(renumbered, self._vocabulary), token_ids=renumbered
                )
            self._snap = new_snap
            # 3. Only now drop the superseded generation.
            stale = [rid for d in touched for rid in old.doc_records.get(d, [])]
            self._delete(stale)
            return gen

    def _write(
        self, ids: list[str], vectors: list[np.ndarray], docs: list[str], metas: list[dict[str, Any]]
    ) -> None:
        if not ids:
            return
        batch = _max_batch(self._col)
        for start in range(0, len(ids), batch):
            end = start + batch
            self._col.upsert(
                ids=ids[start:end],
                embeddings=np.stack(vectors[start:end]),
                documents=docs[start:end],
                metadatas=metas[start:end],
            )

    def _delete(self, ids: list[str]) -> None:
        batch = _max_batch(self._col)
        for start in range(0, len(ids), batch):
            self._col.delete(ids=ids[start : start + batch])

    def _set_meta(self, **updates: Any) -> None:
        # Chroma's modify() replaces the whole metadata mapping, so always write all keys.
        meta = {**self._meta, **updates}
        self._col.modify(metadata=meta)
        self._meta = meta

    def mark_live(self) -> None:
        self._set_meta(state="live")

    def documents(self) -> dict[str, list[Chunk]]:
        """Every document's chunks in order, from the current snapshot (for a rebuild)."""
        docs: dict[str, list[Chunk]] = {}
        for _, chunk, _ in self._snap.rows():
            docs.setdefault(chunk.doc_id, []).append(chunk)
        for chunks in docs.values():
            chunks.sort(key=lambda c: c.ordinal)
        return docs

    # -- load ---------------------------------------------------------------------------------

    def _load(self, stored_version: int) -> _Snapshot:
        """Read every record; keep each document's newest complete generation, drop the rest."""
        by_doc: dict[str, dict[int, list[tuple[str, Chunk, dict[str, Any]]]]] = {}
        offset = 0
        while True:
            page = self._col.get(include=["documents", "metadatas"], limit=_PAGE_SIZE, offset=offset)
            page_ids = page["ids"]
            for rid, text, meta in zip(page_ids, page["documents"], page["metadatas"], strict=True):
                gen = int(meta.get(_GEN, 0))
                chunk = _chunk_from_record(text or "", meta)
                by_doc.setdefault(chunk.doc_id, {}).setdefault(gen, []).append((rid, chunk, dict(meta)))
            if len(page_ids) < _PAGE_SIZE:
                break
            offset += _PAGE_SIZE
        rows: list[tuple[str, Chunk, dict[str, Any]]] = []
        stale: list[str] = []
        max_gen = stored_version
        for gens in by_doc.values():
            live_gen = None
            for gen in sorted(gens, reverse=True):
                records = gens[gen]
                if all(int(m.get(_NCHUNKS, -1)) == len(records) for _, _, m in records):
                    live_gen = gen
                    break
            for gen, records in gens.items():
                max_gen = max(max_gen, gen)
                if gen == live_gen:
                    rows.extend(sorted(records, key=lambda r: r[1].ordinal))
                else:
                    stale.extend(rid for rid, _, _ in records)
        if stale:
            log.warning("%s: removing %d chunks of interrupted writes", self._col.name, len(stale))
            self._delete(stale)
        return _Snapshot.build(rows, max_gen, self._vocabulary)

    # -- search -------------------------------------------------------------------------------

    def search(
        self,
        query_text: str,
        query_vector: np.ndarray,
        top_k: int,
        candidates: int = 100,
        where: Mapping[str, Any] | None = None,
    ) -> RetrievalResult:
        snap = self._snap  # one consistent view for the whole search
        if where:
            _validate_where(where)
        if not snap.record_ids or top_k <= 0:
            return RetrievalResult([], 0.0, snap.corpus_version)
        dense_ids, dense_scores = self._dense(snap, query_vector, candidates, where)
        tokens = tokenize(query_text)
        bm25_ids, bm25_scores = self._bm25(snap, tokens, candidates, where)

        fused = fuse(dense_ids, dense_scores, bm25_ids, bm25_scores, self._fusion)
        order = sorted(fused, key=lambda rid: (-fused[rid], rid))
        dense_pos = {rid: i for i, rid in enumerate(dense_ids)}
        bm25_pos = {rid: i for i, rid in enumerate(bm25_ids)}
        hits: list[Hit] = []
        for rank, rid in enumerate(order[:top_k], start=1):
            d = dense_pos.get(rid)
            b = bm25_pos.get(rid)
            hits.append(
                Hit(
                    chunk=snap.chunks[snap.row_of[rid]],
                    dense_score=dense_scores[d] if d is not None else None,
                    dense_rank=d + 1 if d is not None else None,
                    bm25_score=bm25_scores[b] if b is not None else None,
                    bm25_rank=b + 1 if b is not None else None,
                    fused_score=fused[rid],
                    rank=rank,
                )
            )
        # Term features look at the best *dense* chunks: they are what the question means, not only
        # what shares its words (see confidence.py).
        top_rows = [snap.row_of[rid] for rid in dense_ids[:COVERAGE_CHUNKS]]
        features = compute_features(
            dense_ids, dense_scores, bm25_ids, query_terms(snap.lexical, tokens, top_rows)
        )
        return RetrievalResult(
            hits=hits,
            confidence=confidence(features),
            corpus_version=snap.corpus_version,
            fused_order=[snap.chunks[snap.row_of[rid]].id for rid in order],
            features=features,
        )

    def _dense(
        self, snap: _Snapshot, query_vector: np.ndarray, candidates: int, where: Mapping[str, Any] | None
    ) -> tuple[list[str], list[float]]:
        vec = np.asarray(query_vector, dtype=np.float32).reshape(1, -1)
        n = min(candidates, len(snap.record_ids))
        if not where:
            return self._dense_query(snap, vec, n, None)
        # Chroma's filtered search costs grow with the number of matching chunks (about 45 ms at 10k
        # chunks for a filter matching all). Broad filters are cheaper as an unfiltered over-fetch
        # filtered here; when too few survive the filter is selective, and Chroma's is then cheap.
        ids, scores = self._dense_query(snap, vec, min(3 * n, len(snap.record_ids)), None)
        keep = [i for i, rid in enumerate(ids) if matches_where(snap.metas[snap.row_of[rid]], where)]
        if len(keep) >= n or len(ids) == len(snap.record_ids):
            keep = keep[:n]
            return [ids[i] for i in keep], [scores[i] for i in keep]
        return self._dense_query(snap, vec, n, _chroma_where(where))

    def _dense_query(
        self, snap: _Snapshot, vec: np.ndarray, n: int, where: dict[str, Any] | None
    ) -> tuple[list[str], list[float]]:
        try:
            res = self._col.query(query_embeddings=vec, n_results=n, where=where, include=["distances"])
        except Exception as exc:  # the server went away (or timed out): the caller answers 503
            raise VectorStoreUnavailable(f"the vector store did not answer a search: {exc}") from exc
        ids: list[str] = []
        scores: list[float] = []
        for rid, dist in zip(res["ids"][0], res["distances"][0], strict=True):
            if rid in snap.row_of:  # skip records of uncommitted or superseded generations
                ids.append(rid)
                scores.append(1.0 - float(dist))  # Chroma's cosine distance is 1 - cosine
        return ids, scores

    def _bm25(
        self, snap: _Snapshot, tokens: list[str], candidates: int, where: Mapping[str, Any] | None
    ) -> tuple[list[str], list[float]]:
        scores = snap.lexical.scores(tokens)
        rows = np.flatnonzero(scores > 0)  # a chunk sharing no query term is no BM25 candidate
        if where and rows.size:
            # The filter runs in Python: try it on the best few first and only scan every
            # matching chunk when that did not yield enough candidates.
            pool = rows
            if rows.size > 4 * candidates:
                pool = rows[np.argpartition(-scores[rows], 4 * candidates - 1)[: 4 * candidates]]
            kept = [r for r in pool if matches_where(snap.metas[r], where)]
            if len(kept) < candidates and pool.size < rows.size:
                kept = [r for r in rows if matches_where(snap.metas[r], where)]
            rows = np.array(kept, dtype=np.int64)
        if rows.size > candidates:
            part = np.argpartition(-scores[rows], candidates - 1)[:candidates]
            rows = rows[part]
        rows = rows[np.lexsort((rows, -scores[rows]))]  # by score, ties by row for determinism
        return [snap.record_ids[r] for r in rows], [float(scores[r]) for r in rows]


def _max_batch(collection: Any) -> int:
    try:
        return max(1, min(5000, int(collection._client.get_max_batch_size())))
    except Exception:  # older/newer clients without the private attribute: a safe batch size
        return 1000


# ---------------------------------------------------------------------------------------------
# Store: tenants -> collections, rebuild and swap


def _collection_prefix(tenant: str) -> str:
    # Chroma names allow [a-zA-Z0-9._-] and must start/end alphanumeric; the hash keeps tenants whose
    # sanitised names collide apart.
    safe = re.sub(r"[^a-zA-Z0-9_-]", "-", tenant)[:40]
    digest = hashlib.sha256(tenant.encode()).hexdigest()[:8]
    return f"t_{safe}_{digest}__v"


class IndexStore:
    """Opens the live index of each tenant and builds replacements for `reindex`."""

    def __init__(self, client: Any, embedding_model: str, fusion: FusionParams | None = None) -> None:
        self._client = client
        self._embedding_model = embedding_model
        self._fusion = fusion or FusionParams()
        self._open: dict[str, TenantIndex] = {}
        self._lock = threading.Lock()

    def tenant(self, tenant: str) -> TenantIndex:
        """The tenant's live index, created empty on first use."""
        with self._lock:
            index = self._open.get(tenant)
            if index is None:
                versions = self._versions(tenant)
                live = [v for v, meta in versions.items() if meta.get("state") == "live"]
                if live:
                    index = self._open_collection(tenant, max(live))
                    for v in live:  # a crash between the live flip and the drop of the old build
                        if v != max(live):
                            self._drop(tenant, v)
                else:
                    n = max(versions, default=0) + 1
                    index = self._create(tenant, n, state="live", corpus_version=0)
                self._open[tenant] = index
            return index

    def begin_rebuild(self, tenant: str) -> TenantIndex:
        """A new, empty, not-yet-live index for `tenant`; fill it, then `commit_rebuild` it."""
        current = self.tenant(tenant)
        with self._lock:
            versions = self._versions(tenant)
            for v, meta in versions.items():  # leftovers of an interrupted rebuild
                if meta.get("state") != "live":
                    self._drop(tenant, v)
            n = max(versions, default=0) + 1
            # Start above the live corpus version so caches keyed on it never see a reused number.
            return self._create(tenant, n, state="building", corpus_version=current.corpus_version())

    def commit_rebuild(self, tenant: str, index: TenantIndex) -> None:
        """Make a rebuilt index live (one metadata write), then drop the one it replaces."""
        with self._lock:
            old = self._open.get(tenant)
            index.mark_live()
            self._open[tenant] = index
            if old is not None and old.collection_name != index.collection_name:
                self._client.delete_collection(old.collection_name)

    def abort_rebuild(self, index: TenantIndex) -> None:
        self._client.delete_collection(index.collection_name)

    def refresh_if_changed(self, tenant: str) -> bool:
        """Reopen a tenant's index when another process changed it (a new live build or new writes).

        Replicas sharing a Chroma server call this periodically; it costs one listing of collections.
        """
        with self._lock:
            current = self._open.get(tenant)
        if current is None:
            return False
        versions = self._versions(tenant)
        live = [v for v, meta in versions.items() if meta.get("state") == "live"]
        if not live:
            return False
        newest = max(live)
        name = _collection_prefix(tenant) + str(newest)
        stored = int(versions[newest].get("corpus_version", 0))
        if name == current.collection_name and stored == current.corpus_version():
            return False
        reopened = self._open_collection(tenant, newest)
        with self._lock:
            self._open[tenant] = reopened
        log.info("tenant %s: reopened %s at corpus version %d (changed elsewhere)", tenant, name, stored)
        return True

    def drop_tenant(self, tenant: str) -> None:
        """Delete every build of an index (a deleted vector store's chunks), and forget it."""
        with self._lock:
            self._open.pop(tenant, None)
            for version in self._versions(tenant):
                self._drop(tenant, version)

    def close_tenant(self, tenant: str) -> None:
        """Forget the cached index, e.g. after another process rebuilt it."""
        with self._lock:
            self._open.pop(tenant, None)

    def _versions(self, tenant: str) -> dict[int, dict[str, Any]]:
        prefix = _collection_prefix(tenant)
        found: dict[int, dict[str, Any]] = {}
        for col in self._client.list_collections():
            name = col if isinstance(col, str) else col.name
            if name.startswith(prefix) and name[len(prefix) :].isdigit():
                meta = col.metadata if not isinstance(col, str) else None
                if meta is None:
                    meta = self._client.get_collection(name, embedding_function=None).metadata
                found[int(name[len(prefix) :])] = dict(meta or {})
        return found

    def _open_collection(self, tenant: str, version: int) -> TenantIndex:
        col = self._client.get_collection(_collection_prefix(tenant) + str(version), embedding_function=None)
        return TenantIndex(col, self._fusion)

    def _create(self, tenant: str, version: int, state: str, corpus_version: int) -> TenantIndex:
        col = self._client.create_collection(
            _collection_prefix(tenant) + str(version),
            configuration={"hnsw": {"space": "cosine"}},
            metadata={
                "tenant": tenant,
                "state": state,
                "chunk_schema_version": CHUNK_SCHEMA_VERSION,
                "embedding_model": self._embedding_model,
                "corpus_version": corpus_version,
            },
            embedding_function=None,
        )
        return TenantIndex(col, self._fusion)

    def _drop(self, tenant: str, version: int) -> None:
        try:
            self._client.delete_collection(_collection_prefix(tenant) + str(version))
        except Exception as exc:  # already gone (another process cleaned up): nothing to do
            log.info("could not drop %s v%d: %s", tenant, version, exc)
