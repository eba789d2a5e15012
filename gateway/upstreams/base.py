"""The contract every upstream client keeps, and how its failures are described."""

from __future__ import annotations

import time
from collections.abc import Iterable
from email.utils import parsedate_to_datetime
from typing import Protocol

from gateway.config import DeploymentConfig
from gateway.errors import (
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_from_upstream_body,
)
from gateway.protocols.request import GatewayRequest
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
        where: str | None = None,
    ) -> None:
        super().__init__(message)
        self.where = where  # the upstream's address: for the log, never for the tenant
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

    def to_gateway_error(self, model: str, secrets: Iterable[str] = ()) -> UpstreamError:
        """What the tenant is told: the model and what went wrong, never the upstream's address
        or credentials (an upstream 4xx keeps its own message, scrubbed of keys)."""
        if self.kind == "timeout":
            return UpstreamTimeout(
                f"the upstream for model `{model}` did not answer in time ({self.message})"
            )
        if self.kind == "http" and self.status is not None and self.status < 500:
            return error_from_upstream_body(self.status, self.body, secrets)
        if self.kind == "connect":
            detail = "could not be reached"
        elif self.kind == "http":
            detail = f"failed with HTTP {self.status}"
        else:
            detail = f"gave no usable answer ({self.message})"
        return UpstreamUnavailable(f"the upstream for model `{model}` {detail} after retries")


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
    async def generate(
        self, deployment: DeploymentConfig, request: GatewayRequest, headers: dict[str, str] | None = None
    ) -> GatewayResponse:
        """Return a response (for streams, after the first bytes arrived) or raise UpstreamFailure.

        `headers` are extra request headers for the upstream (W3C trace context)."""
        ...

    async def embeddings(
        self, deployment: DeploymentConfig, request: GatewayRequest, headers: dict[str, str] | None = None
    ) -> GatewayResponse: ...

    async def close(self) -> None: ...
