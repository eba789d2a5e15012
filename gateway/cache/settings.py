"""A tenant's cache settings (the `cache:` block of its policy)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Measured, not guessed (bench/cache_quality.py, curves in bench/CACHE_RESULTS.md). Cosine alone
# never reaches 95% precision on Quora's labelled pairs with the bundled MiniLM (it plateaus near
# 0.92 above 0.98): near-identical questions that differ in a number, a role or a negation score
# as high as true paraphrases. With verify_paraphrase (gateway/cache/paraphrase.py), 0.97 is the
# lowest threshold reaching 0.95 on the tuning half of QQP (0.955); on the held-out half it gives
# 0.967 precision at 6.5% recall (cosine alone at 0.97: 0.906 / 11.9%).
DEFAULT_SIMILARITY_THRESHOLD = 0.97


class CachePolicy(BaseModel):
    """Exact and semantic response caching for one tenant."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Serve and store cached answers for this tenant")
    exact: bool = Field(
        default=True,
        description="Serve an answer cached for the very same request (same model, messages, parameters)",
    )
    semantic: bool = Field(
        default=True,
        description="Serve an answer cached for a paraphrase of the last user turn, in the same "
        "conversation context (model, system prompt, earlier turns, parameters)",
    )
    similarity_threshold: float = Field(
        default=DEFAULT_SIMILARITY_THRESHOLD,
        ge=0,
        le=1,
        description="Cosine similarity in [0, 1] a paraphrase needs to be served a cached answer; "
        "higher is stricter (fewer, safer hits). See bench/CACHE_RESULTS.md for the measured "
        "precision/recall at each value",
    )
    verify_paraphrase: bool = Field(
        default=True,
        description="Serve a paraphrase only when it also asks the same kind of question with the "
        "same numbers, negation, people (I / you) and content words in the same order as the cached "
        "one (gateway/cache/paraphrase.py). Off: cosine similarity alone decides, which serves more "
        "paraphrases and measurably more wrong answers (bench/CACHE_RESULTS.md)",
    )
    ttl_s: int = Field(default=3600, ge=1, le=30 * 86400, description="How long an answer may be served")
    max_entries_per_tenant: int = Field(
        default=10000, ge=1, le=1_000_000, description="Oldest entries are evicted beyond this"
    )
    on_state_error: Literal["fail_open", "fail_closed"] = Field(
        default="fail_open",
        description="Cache store unreachable: fail_open skips the cache (and records it), "
        "fail_closed answers 503",
    )
    cache_nondeterministic: bool = Field(
        default=False,
        description="Also cache requests that ask for sampling (temperature or top_p set above 0 / "
        "below 1). Off by default: a client that sets them explicitly wants varied answers. A "
        "request that leaves them unset is cached",
    )
