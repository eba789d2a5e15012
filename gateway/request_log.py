"""The request log: one JSON line per request with every decision the gateway made.

Lines are batched in memory and written by a background thread (stdout or a rotating file), so
the event loop never waits on disk. Secrets never appear: keys are logged by their short id,
headers are not logged, and prompts and completions only where the tenant's policy allows it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from gateway.config import RequestLogConfig
from gateway.exchange import Summary
from gateway.state.base import NANOS_PER_USD

FLUSH_INTERVAL_S = 0.05
# Lines waiting for the writer; beyond this (a stalled disk or stdout) the oldest are dropped
# rather than growing the process without bound.
MAX_PENDING_LINES = 200_000
FAILURE_REPORT_INTERVAL_S = 10.0


class RequestLog:
    """Lines are appended to an in-memory batch on the event loop (no locks, no logging records)
    and written by one background thread every 50 ms: one wake-up per batch, not per request."""

    def __init__(self, config: RequestLogConfig) -> None:
        self.enabled = config.enabled
        self.path = Path(config.path) if config.path else None
        self._max_bytes = config.max_bytes
        self._backups = config.backups
        self._pending: deque[bytes] = deque(maxlen=MAX_PENDING_LINES)
        self._reported_failure_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._file: BinaryIO | None = None
        if not self.enabled:
            return
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def write(self, entry: dict[str, Any]) -> None:
        if self.enabled:
            try:
                line = orjson.dumps(entry, default=str, option=orjson.OPT_APPEND_NEWLINE)
            except (TypeError, orjson.JSONEncodeError):  # e.g. an integer past 64 bits in a body
                line = orjson.dumps(_encodable(entry), default=str, option=orjson.OPT_APPEND_NEWLINE)
            # deque.append is atomic: the writer thread pops from the other end.
            self._pending.append(line)

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(5)
            self._thread = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL_S):
            self._flush()
        self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        lines = []
        while self._pending:
            lines.append(self._pending.popleft())
        data = b"".join(lines)
        try:
            if self.path is None:
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
            else:
                self._write_file(data)
        except OSError as exc:  # a full disk must not take the gateway down; say so now and then
            now = time.monotonic()
            if now - self._reported_failure_at >= FAILURE_REPORT_INTERVAL_S:
                self._reported_failure_at = now
                print(f"rag-gateway: request log write failed, lines dropped: {exc}", file=sys.stderr)

    def _write_file(self, data: bytes) -> None:
        assert self.path is not None
        if self._file is None:
            self._file = open(self.path, "ab")
        if self._max_bytes and self._file.tell() + len(data) > self._max_bytes and self._file.tell() > 0:
            self._rotate()
        assert self._file is not None
        self._file.write(data)
        self._file.flush()

    def _rotate(self) -> None:
        assert self.path is not None and self._file is not None
        self._file.close()
        self._file = None  # reopened below; if that fails, the next flush tries again
        for n in range(self._backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self._backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._file = open(self.path, "ab")


def _encodable(value: Any) -> Any:
    """A copy orjson can always write: integers it cannot hold become strings."""
    if isinstance(value, dict):
        return {str(k): _encodable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encodable(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)
    return value


def entry_for(
    summary: Summary, trace_id: str | None, request_body: Any = None, response_body: Any = None
) -> dict[str, Any]:
    """The log line of one request. Content (the request and the answer) only when the tenant's
    policy has log_content; decisions never carry it otherwise (stages record hashes, offsets and
    entity types, not values)."""
    usage = summary.usage
    entry: dict[str, Any] = {
        "ts": time.time(),
        "request_id": summary.request_id,
        "trace_id": trace_id,
        "tenant": summary.tenant,
        "key_id": summary.key_id,
        "endpoint": summary.protocol,
        "model": summary.model,
        "served_model": summary.served_model,
        "stream": summary.stream,
        "status": summary.status,
        "error": summary.error,
        "latency_ms": round(summary.duration_s * 1000, 3),
        "upstream_ms": round(summary.upstream_s * 1000, 3),
        "overhead_ms": round(summary.overhead_s * 1000, 3),
        "ttft_ms": None if summary.ttft_s is None else round(summary.ttft_s * 1000, 3),
        "stage_ms": {k: round(v, 3) for k, v in summary.stage_ms.items()},
        "decisions": [{"stage": d.stage, "action": d.action, **(d.detail or {})} for d in summary.decisions],
        "attempts": [
            {
                "model": a.model,
                "deployment": a.deployment,
                "outcome": a.outcome,
                "status": a.status,
                "ms": round(a.duration_ms, 3),
                "error": a.error,
            }
            for a in summary.attempts
        ],
        "retries": sum(1 for a in summary.attempts if a.outcome == "retry"),
        "usage": None if usage is None else usage.chat(),
        "cost_usd": None if summary.cost_nanos is None else summary.cost_nanos / NANOS_PER_USD,
        "response_id": summary.response_id,
        "finish_reasons": summary.finish_reasons,
    }
    retrieval = next(
        (d.detail for d in summary.decisions if d.stage == "retrieval" and d.action == "retrieved"), None
    )
    if retrieval is not None:
        entry["retrieval"] = retrieval
        cache = next((d for d in summary.decisions if d.stage == "cache"), None)
        entry["cache"] = cache.action if cache else None
    if summary.log_content:
        entry["request"] = request_body
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
