"""How likely is it that the retrieved chunks can answer the question? A calibrated [0, 1] score.

The score is a logistic model over cheap retrieval signals chosen to mean the same thing in any
corpus, whatever its size, domain or chunk format:

- dense_top: cosine of the best dense hit (absolute: an off-topic question matches nothing well);
- dense_margin: that cosine minus the mean of the next nine. Relative to the query's own score
  list, so it does not depend on how similar a corpus' chunks are to each other or on the
  embedder's cosine scale for a domain: does one chunk stand out for this query?
- term_coverage: the idf-weighted share of the question's content terms (stemmed, question words
  such as "how", "does", "many" left out) that occur in one chunk: of the COVERAGE_CHUNKS best
  dense chunks, the one that covers most. The closest chunk by meaning is often a neighbour of
  the one that holds the question's specifics (a document's intro, an older version of the same
  page, the abstract next to the right one), and judging coverage on it alone under-rates
  answerable questions;
- unknown_terms: the idf-weighted share of those terms that occur nowhere in the corpus. A question
  about "Salesforce" or "ISO 27001" in a corpus that never mentions them is a strong hint of "not
  answered here", and it is measured against the corpus itself, so it transfers;
- top_agree: 1.0 when BM25 and the dense retriever rank the same chunk first.

Both term features are ratios of idf sums, so they stay in [0, 1] whether the corpus has 60 chunks
or 100,000. The absolute BM25 score, normalised by the query's maximum (the previous model's
strongest feature), is no longer used: fitted on PubMedQA alone it took a large weight because
PubMedQA questions reuse their abstract's wording, and it misjudged paraphrased questions, tables,
code and breadcrumb-prefixed chunks elsewhere.

Fit (calibration, not tuning to a result): `python bench/confidence_fit.py` ingests each dataset
through the product's importers (gateway/evaluation/datasets.py), labels every question answerable
or not (unanswerable = its supporting documents were left out of the corpus), runs the gateway's
own search for it and fits the model on

- PubMedQA (../shared/data/pubmedqa): 1,000 questions, half of the gold contexts ingested; a seeded
  half of the questions is fitted, the other half held out;
- SciFact (../shared/data/scifact, BEIR): TRAIN claims fitted, TEST claims held out, each split with
  the relevant documents of 20% of its claims removed (`import_beir`'s `hold_out`).

Each dataset weighs the same in the fit and each class the same within a dataset. The sample corpus
(samples/golden.jsonl) is never fitted: it is the generalisation check. Result of the fit below
(AUROC; share refused at DEFAULT_REFUSAL_THRESHOLD 0.52 of unanswerable / of answerable questions):

    PubMedQA fit half          AUROC 0.993   refused 95.0% unanswerable,  2.7% answerable
    PubMedQA held-out half     AUROC 0.983   refused 92.2% unanswerable,  4.1% answerable
    SciFact train (fit)        AUROC 0.749   refused 77.8% unanswerable, 39.4% answerable
    SciFact test (held out)    AUROC 0.741   refused 78.3% unanswerable, 40.4% answerable
    samples (never fitted)     AUROC 0.975   refused 100% unanswerable,  10.7% answerable
    RGB en_fact (report only)  AUROC 0.497   (hard negatives: same-topic passages without the answer)

COVERAGE_CHUNKS was picked on the fit parts only (SciFact train / PubMedQA fit AUROC):
1 chunk 0.733 / 0.991, 2: 0.738 / 0.992, 3: 0.742 / 0.994, 5: 0.749 / 0.993, 10: 0.745 / 0.993.
Coverage of the single best dense chunk (the previous model) gave, held out: PubMedQA 0.981,
SciFact test 0.712, samples 0.943 with 17.9% of answerable sample questions refused.

SciFact is hard for any retrieval-only signal: its claims are specific findings, and a corpus of
5,000 abstracts always holds close neighbours of a removed one, while a quarter of the answerable
claims do not get their abstract ranked first. Fitted on PubMedQA alone, the same features score
0.73 AUROC on SciFact test and 0.98 on the samples; fitted on SciFact alone, 0.98 on PubMedQA and
0.97 on the samples: the features transfer, the old PubMedQA-only model (samples AUROC 0.81) did not.

Refit whenever the embedder, the tokenizer/BM25 settings or the features change, and paste the
printed constants here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import astuple, dataclass

import numpy as np

from gateway.retrieval.lexical import LexicalIndex, tokenize


@dataclass(frozen=True, slots=True)
class ConfidenceFeatures:
    dense_top: float  # cosine of the best dense hit
    dense_margin: float  # best cosine minus the mean of the next nine: does one chunk stand out?
    term_coverage: float  # idf-weighted share of the query's content terms in the best-covering top chunk
    unknown_terms: float  # idf-weighted share of the query's content terms absent from the corpus
    top_agree: float  # 1.0 when both retrievers rank the same chunk first

    def vector(self) -> np.ndarray:
        return np.array(astuple(self), dtype=np.float64)


FEATURE_NAMES = tuple(ConfidenceFeatures.__dataclass_fields__)
EMPTY_FEATURES = ConfidenceFeatures(0.0, 0.0, 0.0, 0.0, 0.0)

# Fitted by bench/confidence_fit.py with all-MiniLM-L6-v2 int8 + bm25s (k1 1.5, b 0.75), see above.
INTERCEPT = -4.3413
COEFFICIENTS = (0.2944, 8.2910, 5.1165, 0.8080, 0.6766)  # in FEATURE_NAMES order
# Refuse below this. Picked on the fit data only (PubMedQA fit half + SciFact train): the 0.01 grid
# value maximising, averaged over the two datasets, (share of unanswerable refused - share of
# answerable refused), i.e. both refusal errors weigh the same; never looked at the sample corpus.
DEFAULT_REFUSAL_THRESHOLD = 0.52
# term_coverage looks at this many of the best dense chunks (see above).
COVERAGE_CHUNKS = 5

# Words that phrase a question rather than say what it is about. BM25 keeps most of them (its
# stopword list is short), but for "how much of the question does the chunk cover" they are noise:
# a corpus rarely says "how" or "does", which would make them look like unknown, rare terms.
_FUNCTION_WORDS = """
what which who whom whose when where why how does do did doing done can could would should will shall
may might must many much my our your me we us you i am is are was were be been being has have having
had get got please tell know about there here any some it its he she his her him them they their
this that these those from up out so than too very just also more most other own same only both each
few all whether
"""
FUNCTION_TERMS = frozenset(tokenize(_FUNCTION_WORDS))


@dataclass(frozen=True, slots=True)
class QueryTerms:
    """Per content term of the query: its idf in the corpus, and where it occurs."""

    idf: tuple[float, ...]
    in_top: tuple[bool, ...]  # occurs in the top dense chunk that covers the query best
    known: tuple[bool, ...]  # occurs anywhere in the corpus


NO_TERMS = QueryTerms((), (), ())


def query_terms(lexical: LexicalIndex, tokens: Sequence[str], top_rows: Sequence[int]) -> QueryTerms:
    """Look the query's content terms up in the snapshot's BM25 postings (no re-tokenising of chunks).

    `top_rows` are the best dense chunks (COVERAGE_CHUNKS of them); `in_top` is taken from the one
    that covers the most idf weight. A term's postings are the sorted chunk rows containing it, so
    df is their length and "is t in chunk r" one binary search. That keeps this well under a
    millisecond; tokenising the top chunks again would cost about 0.4 ms each.
    """
    if lexical.size == 0:
        return NO_TERMS
    n = lexical.size
    top = np.asarray(top_rows, dtype=np.int64)
    idf: list[float] = []
    presence: list[np.ndarray] = []  # per content term: is it in each top row
    known: list[bool] = []
    for term in dict.fromkeys(tokens):  # unique, in query order
        if term in FUNCTION_TERMS:
            continue
        rows = lexical.postings(term)
        df = len(rows)
        if df:
            # The row at or after each top row; past the end it is the last, smaller one: no match.
            at = np.minimum(np.searchsorted(rows, top), df - 1)
            presence.append(rows[at] == top)
        else:
            presence.append(np.zeros(len(top), dtype=bool))
        # BM25's (Lucene) idf; an unknown term gets the idf of df 0, the highest there is.
        idf.append(math.log(1.0 + (n - df + 0.5) / (df + 0.5)))
        known.append(df > 0)
    if not len(top):
        return QueryTerms(tuple(idf), (False,) * len(idf), tuple(known))
    covered = np.array(presence, dtype=bool).reshape(len(idf), len(top))
    best = int(np.argmax(np.array(idf) @ covered))  # the first of equals: ties keep the higher-ranked
    return QueryTerms(tuple(idf), tuple(covered[:, best].tolist()), tuple(known))


def compute_features(
    dense_ids: list[str], dense_scores: list[float], bm25_ids: list[str], terms: QueryTerms
) -> ConfidenceFeatures:
    if not dense_ids and not bm25_ids:
        return EMPTY_FEATURES
    top = dense_scores[0] if dense_scores else 0.0
    rest = dense_scores[1:10]
    margin = top - (sum(rest) / len(rest)) if rest else 0.0
    same_first = 1.0 if dense_ids and bm25_ids and dense_ids[0] == bm25_ids[0] else 0.0
    total = sum(terms.idf)
    if total > 0:
        coverage = sum(w for w, hit in zip(terms.idf, terms.in_top, strict=True) if hit) / total
        unknown = sum(w for w, k in zip(terms.idf, terms.known, strict=True) if not k) / total
    else:  # nothing but question words: no lexical evidence either way
        coverage = unknown = 0.0
    return ConfidenceFeatures(top, margin, coverage, unknown, same_first)


def confidence(features: ConfidenceFeatures) -> float:
    if features == EMPTY_FEATURES:
        return 0.0
    z = INTERCEPT + sum(w * x for w, x in zip(COEFFICIENTS, astuple(features), strict=True))
    return 1.0 / (1.0 + math.exp(-z))
