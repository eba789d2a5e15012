"""BM25 over a tenant's chunk texts (bm25s, English stopwords, Snowball English stemmer).

The index is immutable once built: a change to the corpus builds a new one and swaps it in, so
searches running in other threads never see a half-built index.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

# k1/b: bm25s defaults; they gave the best SciFact nDCG@10 of the settings tried (k1 1.2 was lower).
BM25_K1 = 1.5
BM25_B = 0.75

_TOKEN_RE = re.compile(r"(?u)\b\w\w+\b")  # same pattern as bm25s/scikit-learn: 2+ word characters
_STOPWORDS = frozenset(STOPWORDS_EN)
# PyStemmer objects are not thread-safe and searches run in worker threads: one stemmer per thread.
_local = threading.local()


def _stemmer() -> Stemmer.Stemmer:
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        stemmer = Stemmer.Stemmer("english")
        _local.stemmer = stemmer
    return stemmer


def tokenize(text: str) -> list[str]:
    words = [w for w in _TOKEN_RE.findall(text.lower()) if w not in _STOPWORDS]
    return _stemmer().stemWords(words) if words else []


class LexicalIndex:
    """BM25 scores for every chunk of one corpus snapshot; row i is the i-th text given."""

    def __init__(self, texts: Sequence[str], k1: float = BM25_K1, b: float = BM25_B) -> None:
        self.size = len(texts)
        self._retriever: bm25s.BM25 | None = None
        if self.size:
            # bm25s needs at least one token per document to build its vocabulary; an empty
            # chunk gets a placeholder token that no query can produce (tokens are lower-case).
            corpus = [tokenize(t) or ["\x00EMPTY"] for t in texts]
            retriever = bm25s.BM25(k1=k1, b=b)
            retriever.index(corpus, show_progress=False)
            self._retriever = retriever

    def scores(self, query_tokens: list[str]) -> np.ndarray:
        """BM25 score of every chunk for the query (zeros where no query term occurs)."""
        if self._retriever is None:
            return np.zeros(0, dtype=np.float32)
        ids = self._retriever.get_tokens_ids(query_tokens)
        if not ids:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._retriever.get_scores_from_ids(ids), dtype=np.float32)

    def max_possible(self, query_tokens: list[str]) -> float:
        """Upper bound of any chunk's score for this query: the sum of its terms' idf.

        bm25s's default (Lucene) scoring is idf * tf / (tf + k1 * length_norm), whose second factor
        stays below 1.

        Dividing the top score by it gives a length-independent "how well did the best chunk match
        the query's terms" in [0, 1], which the confidence model uses.
        """
        if self._retriever is None or not query_tokens:
            return 0.0
        n = self.size
        total = 0.0
        vocab = self._retriever.vocab_dict
        indptr = self._retriever.scores["indptr"]
        for token in query_tokens:
            tid = vocab.get(token)
            if tid is None:
                continue
            df = int(indptr[tid + 1] - indptr[tid])  # postings of this term = its document frequency
            total += float(np.log(1.0 + (n - df + 0.5) / (df + 0.5)))
        return total
