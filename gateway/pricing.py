"""What a request costs, in tokens and in dollars, computed offline and without importing litellm.

Dollars: a `pricing:` override from gateway.yaml (by public model name) wins; otherwise the price
map litellm ships as a JSON file (`model_prices_and_context_window_backup.json`), read as data:
importing litellm itself costs seconds and ~250 MB, and only its litellm providers need it. A
public model with several deployments is priced at its most expensive one, so a budget is never
undercounted. The built-in local models cost nothing. A model with no known price is counted but
not priced, and one warning names the model and the `pricing:` line that fixes it.

Tokens: tiktoken with the encoding the model uses (o200k for the gpt-4o/4.1/5 and o-series
families, cl100k otherwise), loaded from the encoding files inside the litellm wheel (so counting
never downloads); Claude models with the Anthropic tokenizer file shipped beside them. Messages
are counted the way OpenAI documents it (a few tokens of framing per message); images count as a
fixed size, never fetched.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from gateway.heap import release_freed_memory
from gateway.protocols.model import Usage
from gateway.state.base import NANOS_PER_USD

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.protocols.request import GatewayRequest

log = logging.getLogger("rag_gateway.pricing")

PRICE_MAP_FILE = "model_prices_and_context_window_backup.json"
# Our provider names that the price map knows under another name.
_MAP_PROVIDER = {"vllm": "hosted_vllm", "openai_compatible": "openai"}
LOCAL_PROVIDER = "local"
IMAGE_TOKENS = 765  # a 1024x1024 image at high detail: an estimate, the image is never fetched
TOKENS_PER_MESSAGE = 3
REPLY_PRIMING_TOKENS = 3


class PriceOverride(BaseModel):
    """gateway.yaml `pricing: {public_model: {input_per_1k, output_per_1k}}`, in USD per 1,000 tokens."""

    model_config = ConfigDict(extra="forbid")

    input_per_1k: float = Field(ge=0, description="USD per 1,000 prompt tokens")
    output_per_1k: float = Field(ge=0, description="USD per 1,000 completion tokens")
    cached_input_per_1k: float | None = Field(
        default=None, ge=0, description="USD per 1,000 prompt tokens read from the provider's cache"
    )
    max_output_tokens: int | None = Field(
        default=None, ge=1, description="The model's completion limit, for worst-case estimates"
    )


@dataclass(frozen=True, slots=True)
class Price:
    input_per_token: float
    output_per_token: float
    max_output_tokens: int | None
    source: str  # "override", "map:<price map key>", "local", or "unknown"
    cached_input_per_token: float | None = None

    @property
    def known(self) -> bool:
        return self.source != "unknown"


UNKNOWN_PRICE = Price(0.0, 0.0, None, "unknown")
FREE = Price(0.0, 0.0, None, "local")


def _litellm_data_dir() -> Path | None:
    """Where the litellm package keeps its data files, found without importing it."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def price_map() -> dict[str, Any]:
    """litellm's bundled price map, read once (a few MB of JSON, parsed in ~20 ms)."""
    folder = _litellm_data_dir()
    path = folder / PRICE_MAP_FILE if folder is not None else None
    if path is None or not path.is_file():
        log.warning("no bundled price map found (litellm not installed?): only `pricing:` overrides apply")
        return {}
    return orjson.loads(path.read_bytes())


def _price_from_map(model: str, provider: str) -> Price | None:
    table = price_map()
    mapped = _MAP_PROVIDER.get(provider, provider)
    for key in (f"{mapped}/{model}", model, model.split("/", 1)[-1]):
        info = table.get(key)
        if not isinstance(info, dict):
            continue
        inp, out = info.get("input_cost_per_token"), info.get("output_cost_per_token")
        if inp is None and out is None:
            continue
        max_out = info.get("max_output_tokens") or info.get("max_tokens")
        cached = info.get("cache_read_input_token_cost")
        return Price(
            float(inp or 0),
            float(out or 0),
            max_out if isinstance(max_out, int) else None,
            f"map:{key}",
            float(cached) if isinstance(cached, int | float) else None,
        )
    return None


# -- tokenizers ---------------------------------------------------------------------------------

Counter = Callable[[str], int]
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o", "gpt-oss")
_tokenizer_lock = threading.Lock()


@lru_cache(maxsize=8)
def _tiktoken_counter(encoding: str) -> Counter:
    folder = _litellm_data_dir()
    if folder is not None and "TIKTOKEN_CACHE_DIR" not in os.environ:
        # The encoding files litellm ships, named as tiktoken's cache names them.
        os.environ["TIKTOKEN_CACHE_DIR"] = str(folder / "litellm_core_utils" / "tokenizers")
    import tiktoken

    with _tokenizer_lock:
        enc = tiktoken.get_encoding(encoding)
        # The Encoding keeps its Python rank dict (200k byte strings, ~30 MB for o200k) beside the
        # Rust tables that encode; only pickling a non-registered encoding reads it, and this one is
        # registered (pickled by name). Counting needs the Rust side only.
        enc._mergeable_ranks = {}
        release_freed_memory()
    return lambda text: len(enc.encode_ordinary(text))


@lru_cache(maxsize=1)
def _claude_counter() -> Counter:
    folder = _litellm_data_dir()
    path = folder / "litellm_core_utils" / "tokenizers" / "anthropic_tokenizer.json" if folder else None
    if path is None or not path.is_file():
        return _tiktoken_counter("cl100k_base")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def counter_for(model: str) -> Counter:
    name = model.lower().rsplit("/", 1)[-1]
    if "claude" in name:
        return _claude_counter()
    if name.startswith(_O200K_PREFIXES):
        return _tiktoken_counter("o200k_base")
    return _tiktoken_counter("cl100k_base")


def _content_tokens(content: Any, count: Counter) -> int:
    if isinstance(content, str):
        return count(content)
    total = 0
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") in ("image_url", "input_image", "image"):
                total += IMAGE_TOKENS
            elif isinstance(part.get("text"), str):
                total += count(part["text"])
    return total


def count_messages(messages: Sequence[Mapping[str, Any]], tools: Any, count: Counter) -> int:
    """OpenAI's documented framing: 3 tokens per message, 1 per name, 3 to prime the reply."""
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        total += TOKENS_PER_MESSAGE + _content_tokens(message.get("content"), count)
        if isinstance(message.get("name"), str):
            total += 1 + count(message["name"])
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping):
                total += count(str(function.get("name") or "")) + count(str(function.get("arguments") or ""))
    if tools:
        total += count(orjson.dumps(tools).decode())
    return total


class Pricing:
    """Prices and token counts per public model name; lookups are resolved once per policy load."""

    def __init__(
        self,
        config: GatewayConfig | None = None,
        overrides: Mapping[str, PriceOverride] | None = None,
    ) -> None:
        self._deployments: dict[str, list[tuple[str, str]]] = {}
        if config is not None:
            for model in config.models:
                self._deployments[model.name] = [(d.provider, d.model) for d in model.deployments]
        self._overrides = dict(overrides or {})
        self._prices: dict[str, Price] = {}
        self._counters: dict[str, Counter] = {}
        self._lock = threading.Lock()

    def price(self, model: str) -> Price:
        cached = self._prices.get(model)
        if cached is not None:
            return cached
        with self._lock:
            price = self._resolve_price(model)
            self._prices[model] = price
        if not price.known:
            log.warning(
                "no price known for model %r: its requests are counted but not priced and get no "
                "x-gateway-cost-usd; add it to gateway.yaml, e.g. `pricing: {%s: {input_per_1k: 0.0005, "
                "output_per_1k: 0.0015}}`",
                model,
                model,
            )
        return price

    def _resolve_price(self, model: str) -> Price:
        override = self._overrides.get(model)
        if override is not None:
            return Price(
                override.input_per_1k / 1000,
                override.output_per_1k / 1000,
                override.max_output_tokens,
                "override",
                None if override.cached_input_per_1k is None else override.cached_input_per_1k / 1000,
            )
        deployments = self._deployments.get(model, [])
        if deployments and all(provider == LOCAL_PROVIDER for provider, _ in deployments):
            return FREE
        found = [
            p
            for p in (_price_from_map(m, prov) for prov, m in deployments if prov != LOCAL_PROVIDER)
            if p is not None
        ]
        if not found and model not in self._deployments:
            found = [p for p in [_price_from_map(model, "")] if p is not None]
        if not found:
            return UNKNOWN_PRICE
        # The most expensive deployment: a budget must not be undercounted whichever one serves.
        return max(found, key=lambda p: (p.input_per_token + p.output_per_token, p.max_output_tokens or 0))

    def counter(self, model: str) -> Counter:
        count = self._counters.get(model)
        if count is None:
            deployments = self._deployments.get(model)
            count = self._counters[model] = counter_for(deployments[0][1] if deployments else model)
        return count

    def count_prompt(self, model: str, body: Mapping[str, Any]) -> int:
        return count_messages(body.get("messages") or (), body.get("tools"), self.counter(model))

    def count_text(self, model: str, text: str) -> int:
        return self.counter(model)(text) if text else 0

    def max_output_tokens(self, model: str, request: GatewayRequest, default: int) -> int:
        """The worst case the request allows: its own cap, else the model's, else `default`; times n."""
        asked = request.max_output_tokens()
        limit = self.price(model).max_output_tokens
        if asked is not None:
            cap = min(asked, limit) if limit else asked
        else:
            cap = limit or default
        return cap * request.choices()

    def cost_nanos(self, model: str, prompt_tokens: int, completion_tokens: int) -> int:
        price = self.price(model)
        usd = prompt_tokens * price.input_per_token + completion_tokens * price.output_per_token
        return round(usd * NANOS_PER_USD)

    def usage_nanos(self, model: str, usage: Usage) -> int:
        """The cost of a settled answer; prompt tokens served from the provider's cache at its price."""
        price = self.price(model)
        cached = min(usage.cached_input_tokens, usage.input_tokens) if price.cached_input_per_token else 0
        usd = (
            (usage.input_tokens - cached) * price.input_per_token
            + cached * (price.cached_input_per_token or 0.0)
            + usage.output_tokens * price.output_per_token
        )
        return round(usd * NANOS_PER_USD)

    def warm(self) -> None:
        """Resolve every configured model's price and tokenizer now, not on a client's request."""
        for model in self._deployments:
            self.price(model)
            self.count_text(model, "warm up")


def format_usd(nanos: int) -> str:
    """Dollars with enough digits for a one-token request (gpt-4o-mini input is $0.00000015)."""
    if nanos == 0:
        return "0"
    text = f"{nanos / NANOS_PER_USD:.9f}".rstrip("0")
    return text + "0" if text.endswith(".") else text
