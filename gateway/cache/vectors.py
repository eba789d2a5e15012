"""One tenant's semantic index in process memory: exact (brute-force) cosine over a ring buffer.

Rows are L2-normalised, so cosine is a dot product; at the default 10,000 entries per tenant a
search is one 10,000 x 384 matrix-vector product (well under a millisecond), exact rather than
approximate, and needs no index maintenance. The buffer holds at most `capacity` rows: a new
entry overwrites the oldest, which is the per-tenant eviction. Each row carries its scope (64
bits of the scope digest; the full digest is checked again on the stored answer) and expiry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Nearest:
    entry_id: str
    similarity: float
    vector: np.ndarray  # the entry's own row (a copy): the paraphrase judge compares it with the query


def scope_code(scope_hex: str) -> int:
    return int(scope_hex[:16], 16) - (1 << 63)  # fits an int64


class VectorIndex:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._vectors: np.ndarray | None = None  # allocated on first add, grown by doubling
        self._scopes = np.zeros(0, dtype=np.int64)
        self._expires = np.zeros(0, dtype=np.float64)
        self._ids: list[str | None] = []
        self._slot: dict[str, int] = {}
        self._added = 0  # total adds: the next slot is _added % capacity once full

    def __len__(self) -> int:
        return len(self._slot)

    def add(self, entry_id: str, scope_hex: str, vector: np.ndarray, expires_at: float) -> None:
        """Insert, or refresh in place when the entry is already indexed (idempotent)."""
        slot = self._slot.get(entry_id)
        if slot is None:
            slot = self._free_slot(vector.shape[-1])
            old = self._ids[slot]
            if old is not None:
                del self._slot[old]
            self._ids[slot] = entry_id
            self._slot[entry_id] = slot
        assert self._vectors is not None
        self._vectors[slot] = vector
        self._scopes[slot] = scope_code(scope_hex)
        self._expires[slot] = expires_at

    def _free_slot(self, dim: int) -> int:
        if self._vectors is None:
            self._vectors = np.zeros((min(self.capacity, 64), dim), dtype=np.float32)
            self._scopes = np.zeros(len(self._vectors), dtype=np.int64)
            self._expires = np.zeros(len(self._vectors), dtype=np.float64)
            self._ids = [None] * len(self._vectors)
        used = min(self._added, self.capacity)
        if used == len(self._vectors) and used < self.capacity:
            grown = min(self.capacity, used * 2)
            self._vectors = np.resize(self._vectors, (grown, self._vectors.shape[1]))
            self._scopes = np.resize(self._scopes, grown)
            self._expires = np.resize(self._expires, grown)
            self._expires[used:] = 0
            self._ids.extend([None] * (grown - used))
        slot = self._added % self.capacity
        self._added += 1
        return slot

    def remove(self, entry_id: str) -> None:
        slot = self._slot.pop(entry_id, None)
        if slot is not None:
            self._ids[slot] = None
            self._expires[slot] = 0.0

    def nearest(self, scope_hex: str, vector: np.ndarray, now: float, k: int = 1) -> list[Nearest]:
        """The k most similar live entries of the scope, most similar first, whatever their similarity."""
        if self._vectors is None:
            return []
        n = min(self._added, self.capacity)
        live = (self._scopes[:n] == scope_code(scope_hex)) & (self._expires[:n] > now)
        count = int(live.sum())
        if count == 0:
            return []
        sims = np.where(live, self._vectors[:n] @ vector, -2.0)
        k = min(k, count)
        top = np.argpartition(-sims, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.argsort(-sims[top], kind="stable")][:k]
        found = []
        for slot in top.tolist():
            entry_id = self._ids[slot]
            if entry_id is not None:
                found.append(Nearest(entry_id, float(sims[slot]), self._vectors[slot].copy()))
        return found
