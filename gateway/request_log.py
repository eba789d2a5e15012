"""The request log: one JSON line per request with every decision the gateway made.

Lines are handed to a queue and written by a background thread (stdout or a rotating file), so
the event loop never waits on disk. Secrets never appear: keys are logged by their short id,
headers are not logged, and prompts and completions only where the tenant's policy allows it.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.config import RequestLogConfig
from gateway.context import RequestContext

LOGGER_NAME = "rag_gateway.requests"


class _RawLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return str(record.msg)


class RequestLog:
    def __init__(self, config: RequestLogConfig) -> None:
        self.enabled = config.enabled
        self.path = Path(config.path) if config.path else None
        self._listener: logging.handlers.QueueListener | None = None
        self._logger = logging.getLogger(f"{LOGGER_NAME}.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        if not self.enabled:
            return
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            sink: logging.Handler = logging.handlers.RotatingFileHandler(
                self.path, maxBytes=config.max_bytes, backupCount=config.backups, encoding="utf-8"
            )
        else:
            sink = logging.StreamHandler(sys.stdout)
        sink.setFormatter(_RawLine())
        lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._logger.addHandler(logging.handlers.QueueHandler(lines))
        self._listener = logging.handlers.QueueListener(lines, sink)
        self._listener.start()

    def write(self, entry: dict[str, Any]) -> None:
        if self.enabled:
            self._logger.info(orjson.dumps(entry, default=str).decode())

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()  # flushes what is queued
            self._listener = None


def entry_for(
    ctx: RequestContext, status: int, error: str | None, trace_id: str | None, response_body: dict | None
) -> dict[str, Any]:
    """The log line of one request; `response_body` is included only when content logging is allowed."""
    now = time.perf_counter()
    entry: dict[str, Any] = {
        "ts": time.time(),
        "request_id": ctx.request_id,
        "trace_id": trace_id,
        "tenant": ctx.tenant,
        "key_id": ctx.key_id,
        "endpoint": ctx.endpoint,
        "model": ctx.model,
        "stream": ctx.stream,
        "status": status,
        "error": error,
        "latency_ms": round((now - ctx.started) * 1000, 3),
        "upstream_ms": round(ctx.upstream_s * 1000, 3),
        "overhead_ms": round((now - ctx.started - ctx.upstream_s) * 1000, 3),
        "stage_ms": {k: round(v, 3) for k, v in ctx.stage_ms.items()},
        "decisions": [{"stage": d.stage, "action": d.action, **(d.detail or {})} for d in ctx.decisions],
        "attempts": [
            {
                "model": a.model,
                "deployment": a.deployment,
                "outcome": a.outcome,
                "status": a.status,
                "ms": round(a.duration_ms, 3),
                "error": a.error,
            }
            for a in ctx.attempts
        ],
        "retries": sum(1 for a in ctx.attempts if a.outcome == "retry"),
        "usage": ctx.usage,
        "cost_usd": ctx.cost_usd,
    }
    retrieval = next(
        (d.detail for d in ctx.decisions if d.stage == "retrieval" and d.action == "retrieved"), None
    )
    if retrieval is not None:
        entry["retrieval"] = retrieval
        cache = next((d for d in ctx.decisions if d.stage == "cache"), None)
        entry["cache"] = cache.action if cache else None
    if ctx.policy.log_content:
        entry["request"] = ctx.body
        if response_body is not None:
            entry["response"] = response_body
    return entry


def find_entry(path: Path, request_id: str) -> dict[str, Any] | None:
    """The newest line for a request id, searching the log and its rotated files."""
    candidates = [path, *sorted(path.parent.glob(path.name + ".*"))]
    for file in candidates:
        if not file.exists():
            continue
        found = None
        needle = f'"request_id":"{request_id}"'.encode()
        with open(file, "rb") as handle:
            for line in handle:
                if needle in line:
                    found = orjson.loads(line)
        if found is not None:
            return found
    return None
