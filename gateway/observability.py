"""Traces, the request log and metrics, set up together from gateway.yaml's telemetry section,
and written together at the end of each request from its one summary."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import Span, StatusCode

from gateway.config import TelemetryConfig
from gateway.context import RequestContext
from gateway.exchange import Exchange, Summary, summarize
from gateway.metrics import Metrics
from gateway.request_log import RequestLog, entry_for
from gateway.telemetry import Tracing, setup_tracing

log = logging.getLogger("rag_gateway.observability")


@dataclass(slots=True)
class Observability:
    tracing: Tracing
    request_log: RequestLog
    metrics: Metrics

    @classmethod
    def from_config(cls, config: TelemetryConfig, span_exporter: SpanExporter | None = None) -> Observability:
        return cls(setup_tracing(config, span_exporter), RequestLog(config.request_log), Metrics())

    def close(self) -> None:
        self.request_log.close()
        self.tracing.shutdown()

    def record(
        self, ctx: RequestContext | None, exchange: Exchange, span: Span | None, protocol: str
    ) -> None:
        """Metrics, the log line and both spans of one request, from one summary."""
        if ctx is None:  # refused before a tenant was known (auth, a malformed body)
            self.metrics.requests.labels("", "", protocol, str(exchange.status)).inc()
            if span is not None:
                _end_server_span(span, exchange.status, exchange.error)
            return
        summary = summarize(ctx, exchange)
        if ctx.upstream_span is not None:
            _end_client_span(ctx.upstream_span, summary)
        if span is not None:
            _end_server_span(span, summary.status, summary.error, summary)
        self.metrics.observe(summary)
        if self.request_log.enabled:
            trace_id = format(span.get_span_context().trace_id, "032x") if span is not None else None
            body = ctx.request.native if ctx.request.native is not None else ctx.request.body
            self.request_log.write(entry_for(summary, trace_id, body, exchange.response_body))


def _usage_attributes(summary: Summary) -> dict[str, int]:
    usage = summary.usage
    if usage is None:
        return {}
    return {
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
    }


def _end_server_span(span: Span, status: int, error: str | None, summary: Summary | None = None) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(StatusCode.ERROR, error or "")
    if summary is not None:
        span.set_attributes(_usage_attributes(summary))
        if summary.cost_nanos is not None:
            span.set_attribute("gateway.cost_usd", summary.cost_nanos / 1e9)


def _end_client_span(span: Span, summary: Summary) -> None:
    """The answering attempt's span ends with the answer: a stream's ends with its last chunk."""
    attributes: dict[str, object] = dict(_usage_attributes(summary))
    if summary.response_id:
        attributes["gen_ai.response.id"] = summary.response_id
    if summary.response_model:
        attributes["gen_ai.response.model"] = summary.response_model
    if summary.finish_reasons:
        attributes["gen_ai.response.finish_reasons"] = summary.finish_reasons
    attributes["gateway.streaming"] = summary.stream
    if summary.ttft_s is not None:
        attributes["gateway.time_to_first_token_s"] = round(summary.ttft_s, 6)
    span.set_attributes(attributes)  # type: ignore[arg-type]
    if summary.error is not None and summary.status != 499:
        span.set_status(StatusCode.ERROR, summary.error)
    span.end()
