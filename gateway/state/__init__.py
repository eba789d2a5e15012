"""Shared state for rate limits and budgets: `state: memory` or `state: redis://host:port/db`."""

from __future__ import annotations

from gateway.state.base import (
    DEFAULT_LEASE_S,
    NANOS_PER_USD,
    BudgetCheck,
    BudgetState,
    RateCheck,
    RateState,
    Settlement,
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
    "Settlement",
    "SpendRecord",
    "StateBackend",
    "StateUnavailable",
    "Ticket",
    "Verdict",
    "make_state",
    "spend_report",
]


def make_state(url: str, lease_s: float = DEFAULT_LEASE_S) -> StateBackend:
    """The backend named by gateway.yaml's `state:`: "memory", or a Redis / Valkey URL of one server,
    a cluster or a Sentinel-managed primary (see gateway.state.redis_connect)."""
    if url == "memory":
        from gateway.state.memory import MemoryState

        return MemoryState(lease_s=lease_s)
    from gateway.state.redis_connect import parse

    parse(url)  # a ValueError that says what URL forms there are
    from gateway.state.redis_backend import RedisState

    return RedisState(url, lease_s=lease_s)
