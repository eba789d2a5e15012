"""Exact and semantic response caching: settings, keys, stores. The stage is middleware/cache.py."""

from gateway.cache.settings import DEFAULT_SIMILARITY_THRESHOLD, CachePolicy
from gateway.cache.store import CacheStore, CacheUnavailable, MemoryCacheStore, make_cache_store

__all__ = [
    "DEFAULT_SIMILARITY_THRESHOLD",
    "CachePolicy",
    "CacheStore",
    "CacheUnavailable",
    "MemoryCacheStore",
    "make_cache_store",
]
