"""A tenant's cache settings (the `cache:` block of its policy)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Measured, not guessed (bench/cache_quality.py, curves in bench/CACHE_RESULTS.md). Cosine alone
# never reaches 95% precision on Quora's labelled pairs with the bundled MiniLM (it plateaus near
# 0.93 above 0.98): near-identical questions that differ in a number, a role or a negation score
# as high as true paraphrases. With the rules (gateway/cache/paraphrase.py), 0.97 is the lowest
# threshold reaching 0.95 on the tuning half of QQP; the held-out figures are in CACHE_RESULTS.md.
DEFAULT_SIMILARITY_THRESHOLD = 0.97
# The judge (gateway/cache/judge.py) looks at candidates from this cosine up, and serves those it
# gives at least this probability: on GPTCache's rewrites that serves over half with under 5%
# wrong, where the rules serve none; on QQP it trades precision for recall (CACHE_RESULTS.md).
JUDGE_SIMILARITY_FLOOR = 0.85
DEFAULT_JUDGE_PROBABILITY = 0.85
ParaphraseCheck = Literal["rules", "judge", "off"]


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
    paraphrase_check: ParaphraseCheck = Field(
        default="rules",
        description="What besides cosine similarity decides that a paraphrase may reuse a cached "
        "answer. rules: it asks the same kind of question with the same numbers, negation, people "
        "(I / you) and content words in the same order (gateway/cache/paraphrase.py): the safest, "
        "serves few rewordings. judge: a learned model of the two questions decides, with numbers "
        "and negation still required to match (gateway/cache/judge.py): serves most real rewordings, "
        "with more wrong hits on look-alike questions. off: cosine alone. Measured precision and "
        "recall of each: bench/CACHE_RESULTS.md",
    )
    similarity_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Cosine similarity in [0, 1] a paraphrase needs before the check; higher is "
        f"stricter. Unset: {DEFAULT_SIMILARITY_THRESHOLD} for rules and off, "
        f"{JUDGE_SIMILARITY_FLOOR} for the judge",
    )
    judge_min_probability: float = Field(
        default=DEFAULT_JUDGE_PROBABILITY,
        gt=0,
        lt=1,
        description="With paraphrase_check: judge, the probability in (0, 1) the judge must give "
        "that the two questions share an answer; higher is stricter",
    )
    verify_paraphrase: bool | None = Field(
        default=None,
        description="Deprecated spelling of paraphrase_check: true is rules, false is off",
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

    @model_validator(mode="after")
    def _legacy_verify_paraphrase(self) -> CachePolicy:
        if self.verify_paraphrase is not None:
            implied = "rules" if self.verify_paraphrase else "off"
            if "paraphrase_check" in self.model_fields_set and self.paraphrase_check != implied:
                raise ValueError(
                    f"verify_paraphrase: {str(self.verify_paraphrase).lower()} contradicts "
                    f"paraphrase_check: {self.paraphrase_check}; keep only paraphrase_check"
                )
            self.paraphrase_check = implied
        return self

    @property
    def threshold(self) -> float:
        """The cosine a candidate needs before the paraphrase check."""
        if self.similarity_threshold is not None:
            return self.similarity_threshold
        return JUDGE_SIMILARITY_FLOOR if self.paraphrase_check == "judge" else DEFAULT_SIMILARITY_THRESHOLD
