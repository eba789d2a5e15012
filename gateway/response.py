"""What the chain returns: a JSON body (parsed lazily) or a stream of SSE bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import upstream_error


@dataclass(slots=True)
class GatewayResponse:
    status: int = 200
    raw: bytes | None = None  # the body exactly as the upstream sent it, until a stage changes it
    data: dict[str, Any] | None = None  # the parsed body, once someone asked for it
    stream: AsyncIterator[bytes] | None = None  # SSE bytes for streaming responses
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_json(cls, data: dict[str, Any], status: int = 200) -> GatewayResponse:
        return cls(status=status, data=data)

    @property
    def is_stream(self) -> bool:
        return self.stream is not None

    def json(self) -> dict[str, Any]:
        """The parsed body; parsing happens once and only for stages that look at it."""
        if self.data is None:
            try:
                parsed = orjson.loads(self.raw or b"{}")
            except orjson.JSONDecodeError as exc:
                raise upstream_error(
                    502,
                    f"the upstream's answer is not valid JSON ({exc}); nothing could be checked or cached",
                    "upstream_invalid_response",
                ) from exc
            self.data = parsed if isinstance(parsed, dict) else {"data": parsed}
        return self.data

    def set_json(self, data: dict[str, Any]) -> None:
        self.data = data
        self.raw = None

    def body(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return orjson.dumps(self.data or {})
