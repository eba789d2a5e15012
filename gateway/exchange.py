"""One record per exchange: how a request ended, summarised once for metrics, the log and the spans.

The proxy fills an `Exchange` as the request runs (status, error, when the answer was complete)
and, at the very end, `summarize` folds it together with the request context into a `Summary`.
Durations (total, upstream wait, the gateway's own overhead, time to first token, time per output
token) are computed there, at one instant, so the figures in /metrics, the request log and the
trace always agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gateway.context import Attempt, Decision, RequestContext
from gateway.protocols.model import Usage


@dataclass(slots=True)
class Exchange:
    """How one request ended, as the proxy saw it."""

    status: int = 200
    error: str | None = None
    client_gone: bool = False
    response_body: Any = None  # what the client got, only where the policy allows content in logs
    ended: float | None = None  # perf_counter() when the last byte was sent

    def fail(self, status: int, error: str) -> None:
        self.status, self.error = status, error


@dataclass(slots=True)
class Summary:
    request_id: str
    tenant: str
    key_id: str
    protocol: str
    operation: str  # GenAI operation: chat | embeddings
    model: str  # the public model asked for (after a downgrade)
    served_model: str | None  # the public model that answered (a fallback may have)
    stream: bool
    status: int
    error: str | None
    duration_s: float
    upstream_s: float
    overhead_s: float
    ttft_s: float | None
    tpot_s: float | None
    usage: Usage | None
    cost_nanos: int | None
    response_id: str | None
    response_model: str | None
    finish_reasons: list[str]
    decisions: list[Decision]
    attempts: list[Attempt]
    stage_ms: dict[str, float] = field(default_factory=dict)
    log_content: bool = False


def summarize(ctx: RequestContext, exchange: Exchange) -> Summary:
    end = exchange.ended or time.perf_counter()
    duration = end - ctx.started
    facts = ctx.response_facts
    ttft = tpot = None
    if ctx.first_token_at is not None:
        ttft = max(0.0, ctx.first_token_at - ctx.started)
        if ctx.output_events > 0:
            tpot = max(0.0, end - ctx.first_token_at) / ctx.output_events
    return Summary(
        request_id=ctx.request_id,
        tenant=ctx.tenant,
        key_id=ctx.key_id,
        protocol=ctx.protocol,
        operation=ctx.operation,
        model=ctx.model,
        served_model=ctx.served_model,
        stream=ctx.stream,
        status=exchange.status,
        error=exchange.error,
        duration_s=duration,
        upstream_s=ctx.upstream_s,
        overhead_s=max(0.0, duration - ctx.upstream_s),
        ttft_s=ttft,
        tpot_s=tpot,
        usage=ctx.usage,
        cost_nanos=ctx.cost_nanos,
        response_id=facts.id if facts is not None else None,
        response_model=facts.model if facts is not None else None,
        finish_reasons=list(facts.finish_reasons) if facts is not None else [],
        decisions=ctx.decisions,
        attempts=ctx.attempts,
        stage_ms=ctx.stage_ms,
        log_content=ctx.policy.log_content,
    )
