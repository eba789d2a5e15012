"""Where cached answers live: `memory` (one process) or Redis (shared by every replica).

A store keeps opaque answer payloads under the exact key, per tenant, with a TTL and a per-tenant
cap, and a semantic index from (scope, vector) to those keys. Tenants never share anything:
every key, index and stream is per tenant, and lookups take the tenant explicitly.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from gateway.cache.vectors import VectorIndex


class CacheUnavailable(Exception):
    """The store cannot be reached; the stage applies the tenant's on_state_error."""


@dataclass(frozen=True, slots=True)
class Candidate:
    key: str
    similarity: float
    payload: bytes
    vector: np.ndarray  # the cached question's embedding


@dataclass(frozen=True, slots=True)
class SemanticMatch:
    similarity: float | None  # of the nearest entry in the scope, None when the scope is empty
    # The live answers at or above the threshold, most similar first (at most `k`).
    candidates: tuple[Candidate, ...] = ()


@dataclass(frozen=True, slots=True)
class Limits:
    ttl_s: int
    max_entries: int


class CacheStore(Protocol):
    name: str

    async def get(self, tenant: str, key: str) -> bytes | None: ...

    async def search(
        self, tenant: str, scope: str, vector: np.ndarray, threshold: float, limits: Limits, k: int = 1
    ) -> SemanticMatch: ...

    async def put(
        self,
        tenant: str,
        key: str,
        payload: bytes,
        limits: Limits,
        scope: str | None = None,
        vector: np.ndarray | None = None,
    ) -> None:
        """Store the answer; with scope and vector, also index it for semantic lookups."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class MemoryCacheStore:
    """One process: a dict per tenant (insertion-ordered, for eviction) and a VectorIndex per tenant."""

    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._answers: dict[str, OrderedDict[str, tuple[float, bytes]]] = {}
        self._indexes: dict[str, VectorIndex] = {}
        self._now = clock  # injectable so TTL tests need not sleep

    async def get(self, tenant: str, key: str) -> bytes | None:
        answers = self._answers.get(tenant)
        found = answers.get(key) if answers is not None else None
        if found is None:
            return None
        if found[0] <= self._now():
            del answers[key]  # type: ignore[union-attr]
            return None
        return found[1]

    async def search(
        self, tenant: str, scope: str, vector: np.ndarray, threshold: float, limits: Limits, k: int = 1
    ) -> SemanticMatch:
        index = self._indexes.get(tenant)
        nearest = index.nearest(scope, vector, self._now(), k) if index is not None else []
        if not nearest:
            return SemanticMatch(None)
        assert index is not None
        candidates = []
        for found in nearest:
            if found.similarity < threshold:
                break
            payload = await self.get(tenant, found.entry_id)
            if payload is None:  # evicted from the answers: drop it from the index too
                index.remove(found.entry_id)
            else:
                candidates.append(Candidate(found.entry_id, found.similarity, payload, found.vector))
        return SemanticMatch(nearest[0].similarity, tuple(candidates))

    async def put(
        self,
        tenant: str,
        key: str,
        payload: bytes,
        limits: Limits,
        scope: str | None = None,
        vector: np.ndarray | None = None,
    ) -> None:
        now = self._now()
        answers = self._answers.setdefault(tenant, OrderedDict())
        answers[key] = (now + limits.ttl_s, payload)
        answers.move_to_end(key)
        while len(answers) > limits.max_entries:
            answers.popitem(last=False)
        if scope is not None and vector is not None:
            index = self._indexes.get(tenant)
            if index is None or index.capacity != limits.max_entries:
                # A changed cap starts a fresh index; entries are re-learnt as traffic flows.
                index = self._indexes[tenant] = VectorIndex(limits.max_entries)
            index.add(key, scope, vector, now + limits.ttl_s)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._answers.clear()
        self._indexes.clear()


def make_cache_store(url: str) -> CacheStore:
    """The store named by gateway.yaml's `state:`: "memory", or a Redis / Valkey URL (one server, a
    cluster or a Sentinel-managed primary; see gateway.state.redis_connect)."""
    if url == "memory":
        return MemoryCacheStore()
    from gateway.state.redis_connect import parse

    parse(url)  # a ValueError that says what URL forms there are
    from gateway.cache.redis_store import RedisCacheStore

    return RedisCacheStore(url)
