"""A tenant's cache settings (the `cache:` block of its policy)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Measured, not guessed (bench/cache_quality.py, curve in bench/CACHE_RESULTS.md). With the bundled
# MiniLM no threshold reaches 95% precision on Quora's labelled pairs: held-out precision climbs to
# about 0.93 at 0.98 and stays there up to 0.997 (QQP's negatives include near-identical questions
# and label noise), while recall halves with every further step. 0.98 is where that plateau starts:
# 0.93 precision / 8% recall on QQP, and 75 right / 3 wrong hits on GPTCache's 999 paraphrases.
DEFAULT_SIMILARITY_THRESHOLD = 0.98


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
