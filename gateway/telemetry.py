"""OpenTelemetry tracing: one tracer provider per gateway, exporting over OTLP in batches.

The batch processor queues finished spans and exports them from its own thread, so a slow or
dead collector never slows or fails a request (spans are dropped when the queue is full).
Without an endpoint (config or $OTEL_EXPORTER_OTLP_ENDPOINT) tracing is off and costs nothing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.config import TelemetryConfig

log = logging.getLogger("rag_gateway.telemetry")


@dataclass(slots=True)
class Tracing:
    tracer: Tracer | None  # None: tracing off, callers skip span work entirely
    provider: TracerProvider | None
    propagator: TextMapPropagator

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


def _exporter(endpoint: str, protocol: str) -> SpanExporter:
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPExporter

        url = endpoint if endpoint.rstrip("/").endswith("/v1/traces") else endpoint.rstrip("/") + "/v1/traces"
        return HTTPExporter(endpoint=url, timeout=5)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GRPCExporter

    return GRPCExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"), timeout=5)


def setup_tracing(config: TelemetryConfig, exporter: SpanExporter | None = None) -> Tracing:
    propagator = TraceContextTextMapPropagator()
    endpoint = config.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not config.traces or (endpoint is None and exporter is None):
        return Tracing(None, None, propagator)
    protocol = config.otlp_protocol or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    service = config.service_name or os.environ.get("OTEL_SERVICE_NAME") or "rag-gateway"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter is None:
        assert endpoint is not None
        exporter = _exporter(endpoint, protocol)
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=8192, schedule_delay_millis=1000))
    log.info("tracing to %s over %s as %r", endpoint or "a custom exporter", protocol, service)
    return Tracing(provider.get_tracer("rag_gateway"), provider, propagator)


def scalar_attributes(prefix: str, detail: dict[str, Any] | None) -> dict[str, Any]:
    """Span attributes from a decision's detail: scalars and lists of scalars only."""
    attributes: dict[str, Any] = {}
    for key, value in (detail or {}).items():
        if isinstance(value, str | bool | int | float):
            attributes[f"{prefix}.{key}"] = value
        elif (
            isinstance(value, list | tuple) and value and all(isinstance(v, str | int | float) for v in value)
        ):
            attributes[f"{prefix}.{key}"] = [str(v) for v in value]
    return attributes


def usage_attributes(usage: dict[str, Any]) -> dict[str, int]:
    """GenAI token-usage span attributes from an OpenAI `usage` object."""
    attributes = {}
    for attribute, key in (
        ("gen_ai.usage.input_tokens", "prompt_tokens"),
        ("gen_ai.usage.output_tokens", "completion_tokens"),
    ):
        if isinstance(usage.get(key), int):
            attributes[attribute] = usage[key]
    return attributes


__all__ = ["Tracing", "scalar_attributes", "setup_tracing", "trace", "usage_attributes"]
