"""The per-request context every stage reads and records its decisions on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.policy import Policy


@dataclass(slots=True)
class Decision:
    """What one stage decided, in a form the request log and the span can record."""

    stage: str
    action: str  # e.g. "allow", "hit", "miss", "refuse", "redact", "retry"
    detail: dict[str, Any] | None = None


@dataclass(slots=True)
class Attempt:
    """One upstream call: which deployment, how it ended, how long it took."""

    model: str
    deployment: str
    outcome: str  # "ok" | "retry" | "failed" | "skipped"
    status: int | None
    duration_ms: float
    error: str | None = None


@dataclass(slots=True)
class RequestContext:
    request_id: str
    started: float  # perf_counter() when the request arrived
    endpoint: str  # "chat" | "embeddings"
    policy: Policy
    key_id: str
    body: dict[str, Any]  # the OpenAI request; stages may rewrite it
    model: str  # the public model name (stages may downgrade it)
    stream: bool
    client_headers: dict[str, str]
    response_headers: dict[str, str] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    upstream_s: float = 0.0  # time spent waiting on upstreams (excluded from the overhead figure)
    stage_ms: dict[str, float] = field(default_factory=dict)  # each stage's own time, excluding later stages
    usage: dict[str, Any] | None = None  # the upstream's token usage, when known
    cost_usd: float | None = None  # set by the budget stage
    # Per-stage scratch space for values later stages read (retrieval result, citations, ...).
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def tenant(self) -> str:
        return self.policy.tenant

    def decide(self, stage: str, action: str, **detail: Any) -> None:
        self.decisions.append(Decision(stage, action, detail or None))
