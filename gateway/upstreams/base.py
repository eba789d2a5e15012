"""The contract every upstream client keeps, and how its failures are described."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from gateway.config import DeploymentConfig
from gateway.errors import GatewayError, error_from_upstream_body, upstream_error
from gateway.response import GatewayResponse

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class UpstreamFailure(Exception):
    """An upstream call that did not produce a usable response."""

    def __init__(
        self,
        kind: str,  # "http" | "connect" | "timeout" | "stream"
        message: str,
        *,
        status: int | None = None,
        body: bytes = b"",
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.body = body
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        if self.kind == "http":
            return self.status in RETRYABLE_STATUS
        return True

    @property
    def counts_against_health(self) -> bool:
        """Failures that say the deployment is unwell (not that the request or quota was wrong)."""
        if self.kind == "http":
            return self.status is not None and self.status >= 500
        return True

    def to_gateway_error(self) -> GatewayError:
        if self.kind == "timeout":
            return upstream_error(
                504, f"the upstream did not answer in time: {self.message}", "upstream_timeout"
            )
        if self.kind == "http" and self.status is not None and self.status < 500:
            return error_from_upstream_body(self.status, self.body)
        detail = f"HTTP {self.status}" if self.status else self.message
        return upstream_error(502, f"the upstream failed after retries ({detail})", "upstream_unavailable")


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class UpstreamClient(Protocol):
    async def chat(
        self,
        deployment: DeploymentConfig,
        body: dict[str, Any],
        stream: bool,
        headers: dict[str, str] | None = None,
    ) -> GatewayResponse:
        """Return a response (for streams, after the first bytes arrived) or raise UpstreamFailure.

        `headers` are extra request headers for the upstream (W3C trace context)."""
        ...

    async def embeddings(
        self, deployment: DeploymentConfig, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> GatewayResponse: ...

    async def close(self) -> None: ...
