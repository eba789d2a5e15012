"""A learned paraphrase judge: the probability that a cached question and a new one share an answer.

The rules of gateway/cache/paraphrase.py are safe but narrow: they serve a paraphrase only when it
keeps the same content words in the same order, so real rewordings ("At sea level, what is water's
boiling point?") never hit. The judge reads what the rules cannot: a logistic model over the two
sentence embeddings (their element-wise product and absolute difference, the classic
sentence-pair features) plus the rules' own findings as soft evidence (same question type, share
of content words in common, ...). It was fitted on the tuning half of Quora's labelled duplicate
pairs only (bench/cache_quality.py --fit, which also reports it on the held-out half and on
GPTCache's rewrites); its weights are data, shipped in gateway/cache/data/paraphrase_judge.json
with the embedder they belong to. Numbers and negations stay hard rules under the judge: "train
19707" is never "train 19708", however alike the sentences are.

Scoring one pair is a few 384-wide dot products (microseconds): cheap beside the embedding.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from gateway.cache.paraphrase import QuestionShape

WEIGHTS_PATH = Path(__file__).parent / "data" / "paraphrase_judge.json"
FORMAT_VERSION = 1
# The rules' findings, as numbers, in the order of the fitted weights.
LEXICAL_FEATURES = (
    "same_frame",
    "same_numbers",
    "same_negations",
    "same_addressee",
    "same_words_same_order",
    "same_words",
    "word_jaccard",
    "words_differing_share",
    "one_word_differs",
    "two_words_differ",
    "length_difference",
    "both_yes_no",
)


def lexical_features(cached: QuestionShape, new: QuestionShape) -> list[float]:
    a, b = set(cached.content), set(new.content)
    union = a | b
    differing = len(a ^ b)
    total = len(cached.content) + len(new.content)
    return [
        float(cached.frame == new.frame),
        float(cached.numbers == new.numbers),
        float(cached.negations == new.negations),
        float(cached.addressee == new.addressee),
        float(cached.content == new.content),
        float(a == b),
        len(a & b) / len(union) if union else 1.0,
        min(differing, 6) / 6,
        float(differing == 1),
        float(differing == 2),
        abs(len(cached.content) - len(new.content)) / max(1, total),
        float(cached.frame.startswith("yes-no") == new.frame.startswith("yes-no")),
    ]


def pair_features(cached: np.ndarray, new: np.ndarray, lexical: np.ndarray) -> np.ndarray:
    """Rows of features for pairs of L2-normalised embeddings (n x dim each) and lexical rows."""
    cosine = np.einsum("ij,ij->i", cached, new)[:, None]
    ones = np.ones((len(cached), 1), dtype=cached.dtype)
    return np.hstack([cached * new, np.abs(cached - new), lexical, cosine, cosine * cosine, ones])


@dataclass(frozen=True, slots=True)
class ParaphraseJudge:
    embedder_id: str  # the embedder whose vectors the weights were fitted on
    product: np.ndarray  # weights of cached * new
    difference: np.ndarray  # weights of |cached - new|
    lexical: np.ndarray  # weights of LEXICAL_FEATURES
    cosine: float
    cosine_squared: float
    bias: float

    def probability(
        self, cached: np.ndarray, cached_shape: QuestionShape, new: np.ndarray, new_shape: QuestionShape
    ) -> float:
        cos = float(cached @ new)
        z = (
            float((cached * new) @ self.product)
            + float(np.abs(cached - new) @ self.difference)
            + float(np.dot(lexical_features(cached_shape, new_shape), self.lexical))
            + self.cosine * cos
            + self.cosine_squared * cos * cos
            + self.bias
        )
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    @classmethod
    def from_weights(cls, embedder_id: str, weights: np.ndarray) -> ParaphraseJudge:
        """From one vector laid out as pair_features' columns."""
        dim = (len(weights) - len(LEXICAL_FEATURES) - 3) // 2
        lex_end = 2 * dim + len(LEXICAL_FEATURES)
        w = weights.astype(np.float32)
        return cls(
            embedder_id,
            w[:dim].copy(),
            w[dim : 2 * dim].copy(),
            w[2 * dim : lex_end].copy(),
            float(weights[lex_end]),
            float(weights[lex_end + 1]),
            float(weights[lex_end + 2]),
        )


class JudgeUnavailable(Exception):
    """No fitted weights for this embedder: a policy asking for the judge cannot be built."""


@functools.cache
def load_judge(embedder_id: str, path: Path = WEIGHTS_PATH) -> ParaphraseJudge:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise JudgeUnavailable(f"cannot read the paraphrase judge's weights at {path}: {exc}") from exc
    if data.get("format") != FORMAT_VERSION or data.get("lexical_features") != list(LEXICAL_FEATURES):
        raise JudgeUnavailable(f"{path} was written for another version of the judge; refit it")
    if data.get("embedder_id") != embedder_id:
        raise JudgeUnavailable(
            f"the paraphrase judge was fitted on {data.get('embedder_id')!r} vectors, not {embedder_id!r}: "
            "use paraphrase_check: rules with this embedder, or refit with bench/cache_quality.py --fit"
        )
    return ParaphraseJudge.from_weights(embedder_id, np.asarray(data["weights"], dtype=np.float64))
