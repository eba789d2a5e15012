"""Fit the retrieval confidence model on PubMedQA + SciFact; check it on the untouched sample corpus.

    python bench/confidence_fit.py            # fit, print the table and the constants for confidence.py
    python bench/confidence_fit.py --current  # evaluate the constants now in confidence.py, no refit

Every dataset goes through the gateway's own search (TenantIndex.search, Chroma in a temp dir), so
the features fitted are the features served. Labels are honest: a question is unanswerable because
its supporting documents were left out of the corpus, not because it looks different.

- PubMedQA: `import_pubmedqa` (half of the 1,000 gold contexts ingested, product chunking). A seeded
  half of the questions is fitted, the other half held out; both halves hold both labels.
- SciFact: the BEIR corpus, one chunk per abstract ("title abstract", as bench/retrieval_quality.py
  ingests it, so its cached embeddings are reused: product chunking would mean embedding 10k chunks,
  most of an hour on 2 busy cores). Per split, `hold_out` (the product's) picks 20% of the claims
  whose relevant abstracts no other claim needs and removes those abstracts: TRAIN claims are
  fitted, TEST claims held out, each against its own corpus.
- samples/corpus + samples/golden.jsonl: ingested like `rag-gateway ingest`; never fitted.
- RGB en_fact (report only): news questions; the corpus is every question's "negative" passages
  (same topic, no answer) plus the positive passages of half the questions. Hard negatives that
  no retrieval signal can tell apart from answers: a floor, shown for honesty, not fitted.

Embeddings are cached under .cache/ (gitignored).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.retrieval_quality import auroc, cached_embed, ingest, load_scifact  # noqa: E402
from gateway.evaluation.datasets import hold_out, import_pubmedqa  # noqa: E402
from gateway.evaluation.golden import GoldenQuery, load_golden  # noqa: E402
from gateway.retrieval import confidence as conf  # noqa: E402
from gateway.retrieval.embedder import Embedder, LocalMiniLMEmbedder  # noqa: E402
from gateway.retrieval.index import IndexStore, TenantIndex, make_chroma_client  # noqa: E402
from gateway.retrieval.ingest import Ingestor  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
CACHE = ROOT / ".cache" / "confidence_fit"
FIT, HELD, TEST, FLOOR = "fit", "held-out", "test (never fitted)", "report only"


class CachedEmbedder:
    """The real embedder behind a text -> vector cache kept on disk, for the Ingestor's batches."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dim = inner.dim
        self._path = CACHE / f"embeddings-{inner.model_id}.pkl"
        self._cache: dict[bytes, np.ndarray] = {}
        if self._path.exists():
            with open(self._path, "rb") as handle:
                self._cache = pickle.load(handle)
        self._new = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        keys = [hashlib.sha1(t.encode()).digest() for t in texts]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        if missing:
            for i, vec in zip(missing, self.inner.embed([texts[i] for i in missing]), strict=True):
                self._cache[keys[i]] = vec
            self._new += len(missing)
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[k] for k in keys])

    def save(self) -> None:
        if self._new:
            CACHE.mkdir(parents=True, exist_ok=True)
            with open(self._path, "wb") as handle:
                pickle.dump(self._cache, handle)
            self._new = 0


@dataclass(slots=True)
class Rows:
    """Per question of one dataset part: features, answerable label, what role it plays."""

    dataset: str
    role: str
    x: np.ndarray
    y: np.ndarray


def search_all(
    index: TenantIndex, queries: Sequence[str], vecs: np.ndarray, labels: Sequence[bool]
) -> tuple[np.ndarray, np.ndarray]:
    feats = []
    for text, vec in zip(queries, vecs, strict=True):
        res = index.search(text, vec, top_k=5, candidates=100)  # the policy's default candidates
        feats.append((res.features or conf.EMPTY_FEATURES).vector())
    return np.array(feats), np.array(labels, dtype=bool)


def pubmedqa(store: IndexStore, emb: CachedEmbedder) -> list[Rows]:
    index = store.tenant("pubmedqa")
    golden = import_pubmedqa(DATA / "pubmedqa" / "ori_pqal.json.gz", Ingestor(index, emb), "pubmedqa").queries
    ids = [q.id for q in golden]
    fit_ids = set(random.Random(7).sample(ids, len(ids) // 2))  # independent of which were ingested
    x, y = search_all(
        index, [q.query for q in golden], emb.embed([q.query for q in golden]), [q.answerable for q in golden]
    )
    is_fit = np.array([q.id in fit_ids for q in golden])
    return [Rows("PubMedQA", FIT, x[is_fit], y[is_fit]), Rows("PubMedQA", HELD, x[~is_fit], y[~is_fit])]


def scifact(store: IndexStore, embedder: Embedder) -> list[Rows]:
    doc_ids, texts, queries, qrels = load_scifact()
    vecs = cached_embed(embedder, texts, "scifact-corpus")
    qids_all = sorted(set(qrels["test"]) | set(qrels["train"]))
    qvecs = dict(
        zip(qids_all, cached_embed(embedder, [queries[q] for q in qids_all], "scifact-queries"), strict=True)
    )
    out = []
    for split, role in (("train", FIT), ("test", HELD)):
        rel = {q: docs for q, docs in qrels[split].items() if q in queries}
        held = hold_out(rel, 0.2, seed=13)  # the product's choice (import_beir's default fraction)
        removed = {d for q in held for d in rel[q]}
        keep = [i for i, d in enumerate(doc_ids) if d not in removed]
        index = store.tenant(f"scifact-{split}")
        ingest(index, [doc_ids[i] for i in keep], [texts[i] for i in keep], vecs[keep])
        qids = sorted(rel)
        x, y = search_all(
            index,
            [queries[q] for q in qids],
            np.stack([qvecs[q] for q in qids]),
            [q not in held for q in qids],
        )
        out.append(Rows(f"SciFact {split}", role, x, y))
    return out


def samples(store: IndexStore, emb: CachedEmbedder) -> list[Rows]:
    index = store.tenant("samples")
    Ingestor(index, emb).ingest_paths("samples", [ROOT / "samples" / "corpus"], sync=True)
    golden = load_golden(ROOT / "samples" / "golden.jsonl")
    x, y = search_all(
        index, [q.query for q in golden], emb.embed([q.query for q in golden]), [q.answerable for q in golden]
    )
    return [Rows("samples", TEST, x, y)]


def rgb(store: IndexStore, emb: CachedEmbedder) -> list[Rows]:
    items = [json.loads(line) for line in open(DATA / "rgb" / "en_fact.json", encoding="utf-8")]
    ids = [str(x["id"]) for x in items]
    kept = set(random.Random(13).sample(ids, len(ids) // 2))
    docs = []
    for qid, item in zip(ids, items, strict=True):
        passages = [("n", p) for p in item.get("negative", [])]
        passages += [("p", p) for p in item.get("positive", [])] if qid in kept else []
        docs += [
            (f"rgb{qid}-{kind}{j}.txt", p.encode(), f"rgb{qid}-{kind}{j}")
            for j, (kind, p) in enumerate(passages)
        ]
    index = store.tenant("rgb")
    Ingestor(index, emb).ingest_many("rgb", docs, sync=True)
    golden = [GoldenQuery(qid, item["query"], [], qid in kept) for qid, item in zip(ids, items, strict=True)]
    x, y = search_all(
        index, [q.query for q in golden], emb.embed([q.query for q in golden]), [q.answerable for q in golden]
    )
    return [Rows("RGB en_fact", FLOOR, x, y)]


# ------------------------------------------------------------------------------------------------
# fit


def fit_logistic(
    x: np.ndarray, y: np.ndarray, weight: np.ndarray, l2: float = 1.0
) -> tuple[float, np.ndarray]:
    """Weighted logistic regression by Newton's method on standardised features, L2-penalised.

    The penalty is on standardised weights, so it treats every feature alike whatever its scale;
    it keeps correlated features (dense_top and dense_margin) from taking offsetting extreme weights
    that would only fit the training corpora. Returns raw-scale (intercept, coefficients).
    """
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = np.hstack([np.ones((len(x), 1)), (x - mu) / sd])
    w = np.zeros(z.shape[1])
    reg = np.eye(z.shape[1]) * l2
    reg[0, 0] = 0.0
    for _ in range(100):
        p = 1 / (1 + np.exp(-z @ w))
        grad = z.T @ (weight * (p - y)) + reg @ w
        hess = (z * (weight * p * (1 - p))[:, None]).T @ z + reg
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    coef = w[1:] / sd
    return float(w[0] - (coef * mu).sum()), coef


def balanced_weights(parts: list[Rows]) -> np.ndarray:
    """Each dataset weighs the same, and within it each class the same: no corpus or class dominates."""
    out = []
    for part in parts:
        n_pos, n_neg = int(part.y.sum()), int((~part.y).sum())
        out.append(np.where(part.y, 0.5 / n_pos, 0.5 / n_neg) * 1000 / len(parts))
    return np.concatenate(out)


def pick_threshold(parts: list[Rows], predict: Callable[[np.ndarray], np.ndarray]) -> float:
    """The threshold maximising the mean over fit datasets of (unanswerable refused - answerable refused).

    Youden's J averaged per dataset: the refusal error on either side counts the same, whatever the
    class mix of a dataset. Searched on a 0.01 grid (the policy's precision).
    """
    grid = np.round(np.arange(0.01, 1.0, 0.01), 2)
    scores = [predict(p.x) for p in parts]

    def j(t: float) -> float:
        return float(
            np.mean([np.mean(s[~p.y] < t) - np.mean(s[p.y] < t) for s, p in zip(scores, parts, strict=True)])
        )

    return float(max(grid, key=j))


def report(parts: list[Rows], intercept: float, coef: np.ndarray, threshold: float) -> None:
    def predict(x: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-(intercept + x @ coef)))

    print(
        "\n| dataset | role | answerable | unanswerable | AUROC | "
        f"refused unanswerable @ {threshold:.2f} | refused answerable |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for p in parts:
        s = predict(p.x)
        print(
            f"| {p.dataset} | {p.role} | {int(p.y.sum())} | {int((~p.y).sum())} | "
            f"{auroc(s[p.y], s[~p.y]):.3f} | "
            f"{np.mean(s[~p.y] < threshold):.1%} | {np.mean(s[p.y] < threshold):.1%} |"
        )
    print("\nsingle-feature AUROC (higher = the feature is larger for answerable questions):")
    print("| dataset | role | " + " | ".join(conf.FEATURE_NAMES) + " |")
    print("| --- | --- |" + " --- |" * len(conf.FEATURE_NAMES))
    for p in parts:
        cells = [f"{auroc(p.x[p.y, j], p.x[~p.y, j]):.3f}" for j in range(len(conf.FEATURE_NAMES))]
        print(f"| {p.dataset} | {p.role} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--current", action="store_true", help="evaluate confidence.py's constants, no refit")
    ap.add_argument("--l2", type=float, default=1.0, help="L2 penalty on standardised weights")
    args = ap.parse_args()
    inner = LocalMiniLMEmbedder()
    emb = CachedEmbedder(inner)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        store = IndexStore(make_chroma_client(tmp), inner.model_id)
        parts = pubmedqa(store, emb) + scifact(store, inner) + samples(store, emb) + rgb(store, emb)
    emb.save()
    print(f"features of {sum(len(p.y) for p in parts)} questions in {time.perf_counter() - t0:.0f}s")
    fit_parts = [p for p in parts if p.role == FIT]
    if args.current:
        intercept, coef, threshold = (
            conf.INTERCEPT,
            np.array(conf.COEFFICIENTS),
            conf.DEFAULT_REFUSAL_THRESHOLD,
        )
    else:
        x = np.vstack([p.x for p in fit_parts])
        y = np.concatenate([p.y for p in fit_parts]).astype(float)
        intercept, coef = fit_logistic(x, y, balanced_weights(fit_parts), args.l2)
        threshold = pick_threshold(fit_parts, lambda v: 1 / (1 + np.exp(-(intercept + v @ coef))))
    report(parts, intercept, coef, threshold)
    if not args.current:
        # Transfer check: fit on one corpus alone, score the other's held-out part.
        print("\nleave-one-corpus-out (fit on one corpus' fit part, AUROC on the other's held-out part):")
        for train_name, test_name in (("PubMedQA", "SciFact test"), ("SciFact train", "PubMedQA")):
            tr = [p for p in fit_parts if p.dataset == train_name]
            te = next(p for p in parts if p.dataset == test_name and p.role == HELD)
            b, c = fit_logistic(tr[0].x, tr[0].y.astype(float), balanced_weights(tr), args.l2)
            s = 1 / (1 + np.exp(-(b + te.x @ c)))
            smp = next(p for p in parts if p.dataset == "samples")
            s2 = 1 / (1 + np.exp(-(b + smp.x @ c)))
            print(
                f"  fit {train_name:13} -> {test_name} AUROC {auroc(s[te.y], s[~te.y]):.3f}; "
                f"samples {auroc(s2[smp.y], s2[~smp.y]):.3f}"
            )
        print("\npaste into gateway/retrieval/confidence.py:")
        print(f"INTERCEPT = {intercept:.4f}")
        print(f"COEFFICIENTS = ({', '.join(f'{c:.4f}' for c in coef)})  # in FEATURE_NAMES order")
        print(f"DEFAULT_REFUSAL_THRESHOLD = {threshold:.2f}")


if __name__ == "__main__":
    main()
