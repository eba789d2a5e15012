"""Prometheus metrics, including the OpenTelemetry GenAI client metrics under their Prometheus names.

Everything is derived at the end of a request from its one `Summary` (status, decisions,
attempts, usage, timings), in one place, so stages stay free of metric code. Every metric lives in
the gateway's own registry.

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

from gateway.exchange import Summary

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Bucket boundaries recommended by the GenAI semantic conventions.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The semantic conventions' recommended boundaries for these two.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
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
        self.rejections = Counter(
            "rag_gateway_rate_limit_rejections",
            "429s from the admission stage, by what was over: rate_limit or budget",
            ["tenant", "kind"],
            registry=r,
        )
        self.state_errors = Counter(
            "rag_gateway_state_unavailable",
            "Requests whose limits, budgets or spend could not reach the state store, by what was done "
            "(fail_open, fail_closed, settle_journalled: booked later from the journal)",
            ["action"],
            registry=r,
        )
        self.unpriced = Counter(
            "rag_gateway_unpriced_requests",
            "Answers from a model with no known price (add it under `pricing:` in gateway.yaml)",
            ["model"],
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to the first generated token of a stream (gen_ai.server.time_to_first_token)",
            ["gen_ai_operation_name", "gen_ai_request_model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.time_per_output_token = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per generated chunk after the first (gen_ai.server.time_per_output_token)",
            ["gen_ai_operation_name", "gen_ai_request_model"],
            buckets=TPOT_BUCKETS,
            registry=r,
        )

    def _child(self, metric: Any, *labels: str) -> Any:
        """The labelled child, cached: `labels()` takes a lock and builds a tuple on every call."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, summary: Summary) -> None:
        tenant, model = summary.tenant, summary.model
        child = self._child
        child(self.requests, tenant, model, summary.protocol, str(summary.status)).inc()
        child(self.request_duration, tenant, model).observe(summary.duration_s)
        child(self.overhead, tenant).observe(summary.overhead_s)
        for stage, ms in summary.stage_ms.items():
            child(self.stage_duration, stage).observe(ms / 1000)
        for attempt in summary.attempts:
            if attempt.outcome != "skipped":
                child(self.upstream_duration, attempt.model, attempt.outcome).observe(
                    attempt.duration_ms / 1000
                )
        operation = summary.operation
        error_type = "" if summary.status < 400 and summary.error is None else str(summary.status)
        child(self.operation_duration, operation, model, error_type).observe(summary.duration_s)
        if summary.ttft_s is not None:
            child(self.time_to_first_token, operation, model).observe(summary.ttft_s)
        if summary.tpot_s is not None:
            child(self.time_per_output_token, operation, model).observe(summary.tpot_s)
        usage = summary.usage
        if usage is not None:
            for kind, count in (("input", usage.input_tokens), ("output", usage.output_tokens)):
                child(self.token_usage, operation, model, kind).observe(count)
                child(self.tokens, tenant, model, kind).inc(count)
        if summary.cost_nanos:
            child(self.cost, tenant, summary.served_model or model).inc(summary.cost_nanos / 1e9)
        for decision in summary.decisions:
            stage, action = decision.stage, decision.action
            if stage == "cache":
                # A miss whose nearest paraphrase was turned away by the paraphrase check counts
                # apart: it shows how much recall the paraphrase check costs a tenant.
                rejected = action == "miss" and (decision.detail or {}).get("rejected")
                child(self.cache, tenant, "paraphrase-rejected" if rejected else action).inc()
            elif stage == "refusal" and action == "refuse":
                child(self.refusals, tenant).inc()
            elif action == "block":
                rule = str((decision.detail or {}).get("rule", "")) or "unknown"
                child(self.guardrail_blocks, tenant, stage, rule).inc()
            elif stage == "admission":
                if action == "reject":
                    kind = "budget" if "budget" in (decision.detail or {}) else "rate_limit"
                    child(self.rejections, tenant, kind).inc()
                elif action in ("fail_open", "fail_closed", "settle_journalled"):
                    child(self.state_errors, action).inc()
                elif action == "unpriced":
                    child(self.unpriced, str((decision.detail or {}).get("model", ""))).inc()

    def render(self) -> bytes:
        if os.environ.get(MULTIPROCESS_ENV):
            # Several workers: each writes its own files; add up every worker's, not just this one's.
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
