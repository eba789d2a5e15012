"""Prometheus metrics, including the OpenTelemetry GenAI client metrics under their Prometheus names.

Everything is derived at the end of a request from the request context (status, decisions,
attempts, usage), in one place, so stages stay free of metric code. One registry per gateway.

With several workers (`rag-gateway serve --workers N`) the CLI sets PROMETHEUS_MULTIPROC_DIR
before the workers start, prometheus_client then keeps each worker's values in files there, and
/metrics adds up all workers, whichever one answers the scrape. Only counters and histograms are
used, which sum across processes without further configuration.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.context import RequestContext

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Bucket boundaries recommended by the GenAI semantic conventions.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter(
            "rag_gateway_requests",
            "Requests by tenant, model, endpoint and status",
            ["tenant", "model", "endpoint", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "rag_gateway_request_duration_seconds",
            "Time to the full response",
            ["tenant", "model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "rag_gateway_overhead_seconds",
            "Time the gateway itself added",
            ["tenant"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "rag_gateway_stage_duration_seconds",
            "Own time of each chain stage",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "rag_gateway_upstream_duration_seconds",
            "Upstream attempts",
            ["model", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.operation_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration (gen_ai.client.operation.duration)",
            ["gen_ai_operation_name", "gen_ai_request_model", "error_type"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per operation (gen_ai.client.token.usage)",
            ["gen_ai_operation_name", "gen_ai_request_model", "gen_ai_token_type"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "rag_gateway_tokens", "Tokens by tenant, model and type", ["tenant", "model", "type"], registry=r
        )
        self.cost = Counter("rag_gateway_cost_usd", "Spend in USD", ["tenant", "model"], registry=r)
        self.cache = Counter(
            "rag_gateway_cache_requests",
            "Cache outcomes: hit, semantic-hit, miss, paraphrase-rejected (a miss whose nearest "
            "paraphrase failed the paraphrase check), bypass, unavailable",
            ["tenant", "outcome"],
            registry=r,
        )
        self.refusals = Counter("rag_gateway_refusals", "Low-confidence refusals", ["tenant"], registry=r)
        self.guardrail_blocks = Counter(
            "rag_gateway_guardrail_blocks",
            "Requests or answers blocked by a guardrail",
            ["tenant", "stage", "rule"],
            registry=r,
        )
        self.rate_limited = Counter(
            "rag_gateway_rate_limit_rejections",
            "429s from rate limits or budgets",
            ["tenant", "stage"],
            registry=r,
        )
        self.state_errors = Counter(
            "rag_gateway_state_backend_errors",
            "State backend (Redis) failures",
            ["stage", "mode"],
            registry=r,
        )

    def _child(self, metric: Any, *labels: str) -> Any:
        """The labelled child, cached: `labels()` takes a lock and builds a tuple on every call."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, ctx: RequestContext, status: int, duration_s: float) -> None:
        tenant, model = ctx.tenant, ctx.model
        child = self._child
        child(self.requests, tenant, model, ctx.endpoint, str(status)).inc()
        child(self.request_duration, tenant, model).observe(duration_s)
        child(self.overhead, tenant).observe(max(0.0, duration_s - ctx.upstream_s))
        for stage, ms in ctx.stage_ms.items():
            child(self.stage_duration, stage).observe(ms / 1000)
        for attempt in ctx.attempts:
            if attempt.outcome != "skipped":
                self.upstream_duration.labels(attempt.model, attempt.outcome).observe(
                    attempt.duration_ms / 1000
                )
        operation = "chat" if ctx.endpoint == "chat" else "embeddings"
        error_type = "" if status < 400 else str(status)
        child(self.operation_duration, operation, model, error_type).observe(duration_s)
        usage = ctx.usage or {}
        for kind, key in (("input", "prompt_tokens"), ("output", "completion_tokens")):
            count = usage.get(key)
            if isinstance(count, int):
                self.token_usage.labels(operation, model, kind).observe(count)
                self.tokens.labels(tenant, model, kind).inc(count)
        if ctx.cost_usd:
            self.cost.labels(tenant, model).inc(ctx.cost_usd)
        for decision in ctx.decisions:
            stage, action = decision.stage, decision.action
            if stage == "cache":
                # A miss whose nearest paraphrase was turned away by the paraphrase check counts
                # apart: it shows how much recall verify_paraphrase costs a tenant.
                rejected = action == "miss" and (decision.detail or {}).get("rejected")
                self.cache.labels(tenant, "paraphrase-rejected" if rejected else action).inc()
            elif stage == "refusal" and action == "refuse":
                self.refusals.labels(tenant).inc()
            elif action == "block":
                rule = str((decision.detail or {}).get("rule", "")) or "unknown"
                self.guardrail_blocks.labels(tenant, stage, rule).inc()
            elif action in ("reject", "rate_limited"):
                self.rate_limited.labels(tenant, stage).inc()
            elif action in ("state_error", "fail_open", "fail_closed"):
                self.state_errors.labels(stage, action).inc()

    def render(self) -> bytes:
        if os.environ.get(MULTIPROCESS_ENV):
            # Several workers: each writes its own files; add up every worker's, not just this one's.
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
