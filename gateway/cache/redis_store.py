"""`state: redis://...`: cached answers shared by every gateway replica.

Layout (the tenant in a hash tag, so one tenant's keys share a Redis Cluster slot):
- `rgc:{t}:a:<exact key>`  the answer, SET with EX = the tenant's TTL;
- `rgc:{t}:z`              the tenant's exact keys by insertion time, to evict beyond the cap;
- `rgc:{t}:s`              a stream of semantic entries: entry key, scope, expiry, float32 vector.

Semantic search: every replica keeps the tenant's vectors in a local VectorIndex and, before each
search, reads the stream from the last id it has seen (XRANGE, one round trip that returns nothing
in the steady state). A fresh replica reads the whole stream, which MAXLEN keeps near the cap. The
search itself is then local numpy work, and the answer one GET. Why not a vector database (e.g. a
Chroma collection per tenant on the Chroma server): that adds a service and an HTTP round trip of
several milliseconds to every lookup, and has no TTL; here a lookup is two Redis round trips, an
entry is visible to every replica on its next lookup, and expiry and eviction are Redis's. The cost
is memory: each replica holds max_entries_per_tenant x 1.5 KB per active tenant (15 MB at 10,000).

An insert is one script (SET, ZADD, trim, XADD) so a crash never leaves half an entry. When Redis
cannot be reached every call raises CacheUnavailable quickly (short socket timeouts, and no new
attempt for `down_for_s` after a failure); the pool reconnects on its own once Redis is back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from gateway.cache.store import CacheUnavailable, Candidate, Limits, SemanticMatch
from gateway.cache.vectors import VectorIndex
from gateway.state.redis_connect import CLIENT_ERRORS, ClientOptions, close, connect, parse

log = logging.getLogger("rag_gateway.cache")
PREFIX = "rgc:"
SYNC_PAGE = 1000

# KEYS: answer, zset, stream. ARGV: key, payload, ttl_s, max_entries, now_ms, answer prefix,
# then (semantic only) scope, vector bytes, expires_ms.
PUT = """
local ttl = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
local now = tonumber(ARGV[5])
redis.call('SET', KEYS[1], ARGV[2], 'EX', ttl)
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl * 1000)
local excess = redis.call('ZCARD', KEYS[2]) - cap
if excess > 0 then
  for _, old in ipairs(redis.call('ZRANGE', KEYS[2], 0, excess - 1)) do
    redis.call('DEL', ARGV[6] .. old)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
end
redis.call('EXPIRE', KEYS[2], ttl)
if #ARGV >= 9 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', cap, '*',
             'k', ARGV[1], 's', ARGV[7], 'v', ARGV[8], 'e', ARGV[9])
  redis.call('EXPIRE', KEYS[3], ttl)
end
return 1
"""


def _keys(tenant: str) -> tuple[str, str, str]:
    base = f"{PREFIX}{{{tenant}}}:"
    return base + "a:", base + "z", base + "s"


@dataclass(slots=True)
class _Replica:
    """This process's copy of one tenant's semantic index and how far into the stream it has read."""

    index: VectorIndex
    last_id: bytes = b"0-0"


class RedisCacheStore:
    name = "redis"

    def __init__(
        self, url: str, *, max_connections: int = 64, timeout_s: float = 0.5, down_for_s: float = 0.5
    ) -> None:
        self.url = url
        self._where = parse(url).redacted()  # for logs: never the password
        self._client = connect(url, ClientOptions(max_connections, timeout_s))
        self._put = self._client.register_script(PUT)
        self._replicas: dict[str, _Replica] = {}
        self._down_for_s = down_for_s
        self._down_until = 0.0

    # -- failure handling ------------------------------------------------------------------------

    def _check_up(self) -> None:
        if time.monotonic() < self._down_until:
            raise CacheUnavailable("redis unreachable (recent failure; retrying shortly)")

    def _failed(self, exc: Exception) -> CacheUnavailable:
        if time.monotonic() >= self._down_until:
            log.warning("cache: redis unreachable at %s: %s", self._where, exc)
        self._down_until = time.monotonic() + self._down_for_s
        return CacheUnavailable(f"redis unreachable: {exc}")

    # -- the protocol ----------------------------------------------------------------------------

    async def get(self, tenant: str, key: str) -> bytes | None:
        self._check_up()
        try:
            return await self._client.get(_keys(tenant)[0] + key)
        except CLIENT_ERRORS as exc:
            raise self._failed(exc) from exc

    async def search(
        self, tenant: str, scope: str, vector: np.ndarray, threshold: float, limits: Limits, k: int = 1
    ) -> SemanticMatch:
        self._check_up()
        try:
            replica = await self._sync(tenant, limits.max_entries)
            nearest = replica.index.nearest(scope, vector, time.time(), k)
            if not nearest:
                return SemanticMatch(None)
            above = [found for found in nearest if found.similarity >= threshold]
            keys = [_keys(tenant)[0] + found.entry_id for found in above]
            payloads = await self._client.mget(keys) if keys else []
        except CLIENT_ERRORS as exc:
            raise self._failed(exc) from exc
        candidates = []
        for found, payload in zip(above, payloads, strict=True):
            if payload is None:  # expired or evicted in Redis: forget it here as well
                replica.index.remove(found.entry_id)
            else:
                candidates.append(Candidate(found.entry_id, found.similarity, payload, found.vector))
        return SemanticMatch(nearest[0].similarity, tuple(candidates))

    async def _sync(self, tenant: str, capacity: int) -> _Replica:
        replica = self._replicas.get(tenant)
        if replica is None or replica.index.capacity != capacity:
            replica = self._replicas[tenant] = _Replica(VectorIndex(capacity))
        stream = _keys(tenant)[2]
        now_ms = time.time() * 1000
        while True:
            rows = await self._client.xrange(stream, b"(" + replica.last_id, b"+", count=SYNC_PAGE)
            for entry_id, fields in rows:
                # Concurrent syncs may both read an entry; adding is idempotent, last_id only grows.
                if _stream_id(entry_id) > _stream_id(replica.last_id):
                    replica.last_id = entry_id
                expires_ms = float(fields[b"e"])
                if expires_ms <= now_ms:
                    continue
                vector = np.frombuffer(fields[b"v"], dtype=np.float32)
                replica.index.add(fields[b"k"].decode(), fields[b"s"].decode(), vector, expires_ms / 1000)
            if len(rows) < SYNC_PAGE:
                return replica

    async def put(
        self,
        tenant: str,
        key: str,
        payload: bytes,
        limits: Limits,
        scope: str | None = None,
        vector: np.ndarray | None = None,
    ) -> None:
        self._check_up()
        answers, zset, stream = _keys(tenant)
        now_ms = int(time.time() * 1000)
        args: list[bytes | str | int] = [key, payload, limits.ttl_s, limits.max_entries, now_ms, answers]
        if scope is not None and vector is not None:
            vec = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
            args += [scope, vec, now_ms + limits.ttl_s * 1000]
        try:
            await self._put(keys=[answers + key, zset, stream], args=args)
        except CLIENT_ERRORS as exc:
            raise self._failed(exc) from exc

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except CLIENT_ERRORS as exc:
            raise self._failed(exc) from exc
        self._down_until = 0.0

    async def close(self) -> None:
        await close(self._client)


def _stream_id(raw: bytes) -> tuple[int, int]:
    ms, _, seq = raw.partition(b"-")
    return int(ms), int(seq or 0)
