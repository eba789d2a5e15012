"""Retrieval as the chain uses it: embed the query and search the tenant's index off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gateway.retrieval.embedder import Embedder
from gateway.retrieval.index import IndexStore, RetrievalResult


class RetrievalService:
    def __init__(self, store: IndexStore, embedder: Embedder, threads: int = 2) -> None:
        self.store = store
        self.embedder = embedder
        # Embedding and the index search are CPU work; a small dedicated pool keeps them off the
        # event loop without competing with the default executor used for file I/O.
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="retrieval")

    def search_sync(
        self, tenant: str, query: str, top_k: int, candidates: int, where: Mapping[str, Any] | None
    ) -> RetrievalResult:
        index = self.store.tenant(tenant)
        vector = self.embedder.embed([query])[0]
        return index.search(query, vector, top_k=top_k, candidates=candidates, where=where or None)

    async def search(
        self, tenant: str, query: str, top_k: int, candidates: int, where: Mapping[str, Any] | None = None
    ) -> RetrievalResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, self.search_sync, tenant, query, top_k, candidates, where
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
