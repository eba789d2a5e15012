"""Searching a tenant's vector stores: one implementation for every door that searches them.

`POST /v1/vector_stores/{id}/search` and the Responses API's `file_search` tool (run by the
gateway, middleware/file_search.py) both come here, so a query finds the same results with the
same scores and confidence wherever it was asked. Each store is searched with the hybrid search
and confidence of the retrieval index that holds it; results are ranked by their cosine score
(OpenAI's `score` is a relevance in [0, 1]) and kept only for files that are attached, completed
and match the caller's attribute filters.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError, bad_request
from gateway.files import FileStore
from gateway.retrieval.index import Hit, RetrievalResult
from gateway.vector_stores import VectorStoreRegistry, corpus_store_id, index_key, matches, store_object

if TYPE_CHECKING:
    from gateway.policy import Policy
    from gateway.retrieval.service import RetrievalService

MAX_RESULTS = 50
SEARCH_CANDIDATES = 100
ACTIVITY_PRECISION_S = 60


def store_not_found(store_id: str) -> GatewayError:
    return GatewayError(
        404,
        f"No vector store found with id '{store_id}'.",
        code="vector_store_not_found",
        param="vector_store_id",
    )


@dataclass(slots=True)
class StoreResult:
    """One search result: a chunk of an attached file, as OpenAI's result shape names it."""

    store_id: str
    file_id: str
    filename: str
    score: float  # the chunk's cosine similarity to the query, clipped to [0, 1]
    attributes: dict[str, Any]
    hit: Hit

    def as_openai(self, text_key: str = "content") -> dict[str, Any]:
        """The vector store search result (`content` parts) or a file_search_call result (`text`)."""
        chunk_text = self.hit.chunk.text
        text: Any = [{"type": "text", "text": chunk_text}] if text_key == "content" else chunk_text
        return {
            "file_id": self.file_id,
            "filename": self.filename,
            "score": round(self.score, 6),
            "attributes": self.attributes,
            text_key: text,
        }


@dataclass(slots=True)
class StoreResults:
    results: list[StoreResult]
    # The most confident store's retrieval result: what the refusal policy and the log read.
    best: RetrievalResult

    @property
    def confidence(self) -> float:
        return self.best.confidence


class StoreSearch:
    def __init__(
        self,
        registry: VectorStoreRegistry,
        files: FileStore,
        retrieval: Callable[[], Awaitable[RetrievalService]],
    ) -> None:
        self.registry = registry
        self.files = files
        self.retrieval = retrieval  # opened on first use; raises a 400 when gateway.yaml turns it off

    async def record(self, policy: Policy, store_id: str) -> dict[str, Any]:
        """The tenant's store, or a 404 exactly as for an unknown id (another tenant's included)."""
        record = await asyncio.to_thread(self.registry.get, policy.tenant, store_id)
        if record is None and store_id == corpus_store_id(policy.tenant) and policy.retrieval.enabled:
            # The store that stands for the tenant's retrieval corpus, recorded on first sight.
            record = await asyncio.to_thread(
                self.registry.create, policy.tenant, f"{policy.tenant} corpus",
                {"kind": "retrieval corpus"}, None, None, store_id,
            )  # fmt: skip
        if record is None:
            raise store_not_found(store_id)
        return record

    async def every_store(self, policy: Policy) -> list[tuple[str, dict[str, Any]]]:
        """The tenant's stores that can be searched: its corpus (when its policy has retrieval)
        and every store it created that has not expired."""
        corpus = corpus_store_id(policy.tenant)
        listed = {r["id"]: r for r in await asyncio.to_thread(self.registry.list, policy.tenant)}
        stores = []
        if policy.retrieval.enabled:
            # Read with the others; recorded here only on the corpus store's first sight.
            stores.append((corpus, listed.get(corpus) or await self.record(policy, corpus)))
        for store_id, record in listed.items():
            if store_id != corpus and store_object(record)["status"] != "expired":
                stores.append((store_id, record))
        return stores

    async def searchable(self, policy: Policy, store_id: str) -> dict[str, Any]:
        record = await self.record(policy, store_id)
        if store_object(record)["status"] == "expired":
            raise bad_request(f"The vector store {store_id} has expired.", param="vector_store_id")
        return record

    async def search(
        self,
        policy: Policy,
        stores: Sequence[tuple[str, dict[str, Any]]],
        queries: Sequence[str],
        limit: int,
        condition: dict[str, Any] | None,
        threshold: float,
    ) -> StoreResults:
        """The best `limit` results over the given stores (id and record, from `searchable`)."""
        retrieval = await self.retrieval()
        best: dict[tuple[str, str], tuple[float, str, Hit]] = {}
        top: RetrievalResult | None = None
        for store_id, _ in stores:
            key = index_key(policy.tenant, store_id)
            for query in queries:
                result = await retrieval.search(key, query, MAX_RESULTS, SEARCH_CANDIDATES)
                if top is None or result.confidence > top.confidence:
                    top = result
                for hit in result.hits:
                    score = min(1.0, max(0.0, hit.dense_score or 0.0))
                    seen = best.get((store_id, hit.chunk.id))
                    if seen is None or seen[0] < score:
                        best[(store_id, hit.chunk.id)] = (score, store_id, hit)
        records = dict(stores)
        names: dict[str, str] = {}
        results: list[StoreResult] = []
        for score, store_id, hit in sorted(best.values(), key=lambda found: -found[0]):
            file_id = hit.chunk.doc_id
            entry = records[store_id]["files"].get(file_id)
            if entry is None and store_id == corpus_store_id(policy.tenant):
                # The corpus store also holds documents ingested by the CLI or the admin API: no
                # file entry, no attributes, named by their source.
                entry = {"status": "completed", "attributes": {}}
                names.setdefault(file_id, hit.chunk.source)
            if entry is None or entry["status"] != "completed" or score < threshold:
                continue  # detached meanwhile, or below the caller's threshold
            attributes = entry.get("attributes") or {}
            if condition is not None and not matches(attributes, condition):
                continue
            if file_id not in names:
                stored = await asyncio.to_thread(self.files.get, policy.tenant, file_id)
                names[file_id] = stored.filename if stored is not None else file_id
            results.append(StoreResult(store_id, file_id, names[file_id], score, attributes, hit))
            if len(results) == limit:
                break
        now = int(time.time())
        for store_id, record in stores:
            # Expiry counts in days: a minute's precision spares rewriting the record per search.
            if now - int(record.get("last_active_at") or 0) >= ACTIVITY_PRECISION_S:
                await asyncio.to_thread(self.registry.update, policy.tenant, store_id, last_active_at=now)
        return StoreResults(results, top or RetrievalResult([], 0.0, 0))
