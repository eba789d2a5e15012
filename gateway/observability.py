"""Traces, the request log and metrics, set up together from gateway.yaml's telemetry section."""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.sdk.trace.export import SpanExporter

from gateway.config import TelemetryConfig
from gateway.metrics import Metrics
from gateway.request_log import RequestLog
from gateway.telemetry import Tracing, setup_tracing


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
