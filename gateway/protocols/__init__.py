"""The protocols the gateway speaks, one module each, on both edges.

- `chat`: OpenAI chat completions (also the internal request form, see `request`);
- `responses`: OpenAI's Responses API;
- `messages`: Anthropic's Messages API;
- `completions`: OpenAI's legacy text completions.

Each module decodes its wire format into the internal form (`model`) and encodes the internal form
back into it: for clients (requests in, answers out) and for upstreams (requests out, answers in).
`wire_codec` finds the decoder for an upstream answer's protocol.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from typing import Any, Protocol, cast

from gateway.protocols.model import Completion, Events, Usage

WIRE_PROTOCOLS = ("chat", "responses", "messages", "completions", "embeddings")


class WireCodec(Protocol):
    """How to read an upstream's answer in one protocol."""

    NAME: str

    def decode_json(self, data: dict[str, Any]) -> Completion: ...

    def decode_stream(self, chunks: AsyncIterator[bytes]) -> Events: ...

    def usage_of_body(self, data: dict[str, Any]) -> Usage | None: ...


_codecs: dict[str, WireCodec] = {}


def wire_codec(name: str) -> WireCodec:
    codec = _codecs.get(name)
    if codec is None:
        if name not in WIRE_PROTOCOLS:
            raise ValueError(f"no wire protocol {name!r}")
        codec = _codecs[name] = cast(WireCodec, importlib.import_module(f"gateway.protocols.{name}"))
    return codec
