"""What a request costs, in tokens and in dollars, computed offline.

Tokens: litellm's `token_counter` with the model's tokenizer. Its OpenAI encodings (cl100k,
o200k, p50k) and the Anthropic and DeepSeek tokenizers ship inside the litellm wheel, and
importing litellm points TIKTOKEN_CACHE_DIR at them, so counting never downloads. Two of its
paths would go to the network, and both are closed here: Llama and Cohere models load their
tokenizer from the Hugging Face hub (here they are counted with cl100k instead), and image parts
are fetched to measure them (here they get litellm's default image size).

Dollars: a `pricing:` override from gateway.yaml (by public model name) wins; otherwise
litellm's bundled price map (LITELLM_LOCAL_MODEL_COST_MAP=True keeps it from fetching a newer
one). A public model with several deployments is priced at its most expensive one, so a budget
is never undercounted. A model with no known price costs 0 and is logged once.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.state.base import NANOS_PER_USD

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

log = logging.getLogger("rag_gateway.pricing")

# Tokenizer kinds litellm reads from its own package; every other kind is a hub download.
_BUNDLED_TOKENIZER_KINDS = frozenset({"anthropic", "deepseek"})
_HUB_TOKENIZER_RE = re.compile(r"llama|command-r|replicate", re.I)
# Our provider names that litellm knows under another name.
_LITELLM_PROVIDER = {"vllm": "hosted_vllm", "openai_compatible": "openai"}


class PriceOverride(BaseModel):
    """gateway.yaml `pricing: {public_model: {input_per_1k, output_per_1k}}`, in USD per 1,000 tokens."""

    model_config = ConfigDict(extra="forbid")

    input_per_1k: float = Field(ge=0, description="USD per 1,000 prompt tokens")
    output_per_1k: float = Field(ge=0, description="USD per 1,000 completion tokens")
    max_output_tokens: int | None = Field(
        default=None, ge=1, description="The model's completion limit, for worst-case estimates"
    )


@dataclass(frozen=True, slots=True)
class Price:
    input_per_token: float
    output_per_token: float
    max_output_tokens: int | None
    source: str  # "override", "litellm:<price map key>", or "unknown"

    @property
    def known(self) -> bool:
        return self.source != "unknown"


UNKNOWN_PRICE = Price(0.0, 0.0, None, "unknown")


def _litellm() -> Any:
    # Importing litellm takes seconds: only the stages that need it pay, once.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    return litellm


def _downloads_tokenizer(model: str) -> bool:
    try:
        from litellm.utils import huggingface_tokenizer_kind
    except ImportError:  # another litellm version: judge by the name like it does
        return bool(_HUB_TOKENIZER_RE.search(model))
    kind = huggingface_tokenizer_kind(model)
    return kind is not None and kind not in _BUNDLED_TOKENIZER_KINDS


def _price_from_map(model: str, provider: str) -> Price | None:
    litellm = _litellm()
    attempts: list[tuple[str, str | None]] = [
        (model, _LITELLM_PROVIDER.get(provider, provider)),
        (model, None),
    ]
    for name, custom_provider in attempts:
        try:
            info = litellm.get_model_info(name, custom_llm_provider=custom_provider)
        except Exception:  # litellm raises several kinds for "not in the map"
            continue
        inp, out = info.get("input_cost_per_token"), info.get("output_cost_per_token")
        if inp is None and out is None:
            continue
        max_out = info.get("max_output_tokens") or info.get("max_tokens")
        return Price(float(inp or 0), float(out or 0), max_out, f"litellm:{info.get('key') or name}")
    return None


class Pricing:
    """Prices and token counts per public model name; lookups are resolved once and cached."""

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
        self._tokenizer_models: dict[str, str | None] = {}
        self._lock = threading.Lock()
        self.litellm = _litellm()

    def price(self, model: str) -> Price:
        cached = self._prices.get(model)
        if cached is not None:
            return cached
        with self._lock:
            price = self._resolve_price(model)
            self._prices[model] = price
        if not price.known:
            log.warning(
                "no price known for model %r: its requests count as $0 against budgets; "
                "add it under `pricing:` in gateway.yaml",
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
            )
        found = [
            p
            for p in (_price_from_map(m, prov) for prov, m in self._deployments.get(model, []))
            if p is not None
        ]
        if not found and model not in self._deployments:
            found = [p for p in [_price_from_map(model, "")] if p is not None]
        if not found:
            return UNKNOWN_PRICE
        # The most expensive deployment: a budget must not be undercounted whichever one serves.
        return max(found, key=lambda p: (p.input_per_token + p.output_per_token, p.max_output_tokens or 0))

    def tokenizer_model(self, model: str) -> str | None:
        """The name litellm should pick a tokenizer by; None means its default (cl100k)."""
        if model in self._tokenizer_models:
            return self._tokenizer_models[model]
        deployments = self._deployments.get(model)
        name = deployments[0][1] if deployments else model
        chosen = None if _downloads_tokenizer(name) else name
        self._tokenizer_models[model] = chosen
        return chosen

    def count_prompt(self, model: str, body: Mapping[str, Any]) -> int:
        messages = body.get("messages") or []
        tools = body.get("tools") or None
        try:
            return int(
                self.litellm.token_counter(
                    model=self.tokenizer_model(model) or "",
                    messages=messages,
                    tools=tools,
                    use_default_image_token_count=True,  # never fetch an image URL to size it
                )
            )
        except Exception:  # odd content must not fail the request: estimate from its size
            import orjson

            return len(orjson.dumps(messages)) // 4 + 1

    def count_text(self, model: str, text: str) -> int:
        if not text:
            return 0
        try:
            return int(self.litellm.token_counter(model=self.tokenizer_model(model) or "", text=text))
        except Exception:
            return len(text) // 4 + 1

    def max_output_tokens(self, model: str, body: Mapping[str, Any], default: int) -> int:
        """The worst case the request allows: its own cap, else the model's, else `default`; times n."""
        asked = body.get("max_completion_tokens") or body.get("max_tokens")
        limit = self.price(model).max_output_tokens
        if isinstance(asked, int) and asked > 0:
            cap = min(asked, limit) if limit else asked
        else:
            cap = limit or default
        choices = body.get("n")
        return cap * (choices if isinstance(choices, int) and choices > 1 else 1)

    def cost_nanos(self, model: str, prompt_tokens: int, completion_tokens: int) -> int:
        price = self.price(model)
        usd = prompt_tokens * price.input_per_token + completion_tokens * price.output_per_token
        return round(usd * NANOS_PER_USD)


def format_usd(nanos: int) -> str:
    """Dollars with enough digits for a one-token request (gpt-4o-mini input is $0.00000015)."""
    text = f"{nanos / NANOS_PER_USD:.9f}".rstrip("0")
    return text + "0" if text.endswith(".") else text
