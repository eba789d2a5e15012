"""Shared state for rate limits and budgets: `state: memory` or `state: redis://host:port/db`."""

from __future__ import annotations

from gateway.state.base import (
    NANOS_PER_USD,
    BudgetCheck,
    BudgetState,
    RateCheck,
    RateState,
    SpendRecord,
    StateBackend,
    StateUnavailable,
    Ticket,
    Verdict,
)
from gateway.state.spend import spend_report

__all__ = [
    "NANOS_PER_USD",
    "BudgetCheck",
    "BudgetState",
    "RateCheck",
    "RateState",
    "SpendRecord",
    "StateBackend",
    "StateUnavailable",
    "Ticket",
    "Verdict",
    "make_state",
    "spend_report",
]


def make_state(url: str) -> StateBackend:
    """The backend named by gateway.yaml's `state:` ("memory" or a redis:// / rediss:// / unix:// URL)."""
    if url == "memory":
        from gateway.state.memory import MemoryState

        return MemoryState()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from gateway.state.redis_backend import RedisState

        return RedisState(url)
    raise ValueError(f"state: expected 'memory' or a redis://host:port/db URL, got {url!r}")
