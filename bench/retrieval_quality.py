"""Retrieval quality and speed of the hybrid index, on data in ../shared/data.

    python bench/retrieval_quality.py                   # SciFact + PubMedQA confidence
    python bench/retrieval_quality.py --tune            # + fusion grid on SciFact train queries
    python bench/retrieval_quality.py --timing          # search latency at 1k/10k/100k chunks

The confidence model is fitted by bench/confidence_fit.py (PubMedQA + SciFact, checked on the
sample corpus); the PubMedQA section here only reports the constants in confidence.py.

Everything goes through IndexStore/TenantIndex (Chroma in a temp dir), so the numbers are the
gateway's. Embeddings are cached under .cache/bench/ (gitignored): the first run embeds SciFact's
5,183 abstracts, about 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.retrieval import confidence as conf  # noqa: E402
from gateway.retrieval.embedder import Embedder, LocalMiniLMEmbedder  # noqa: E402
from gateway.retrieval.fusion import FusionParams  # noqa: E402
from gateway.retrieval.index import IndexStore, RetrievalResult, TenantIndex, make_chroma_client  # noqa: E402
from gateway.retrieval.types import Chunk  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
CACHE = ROOT / ".cache" / "bench"


# ------------------------------------------------------------------------------------------------
# helpers


def cached_embed(embedder: Embedder, texts: Sequence[str], name: str) -> np.ndarray:
    key = hashlib.sha256("\x1f".join([embedder.model_id, *texts]).encode()).hexdigest()[:16]
    path = CACHE / f"{name}-{key}.npy"
    if path.exists():
        return np.load(path)
    t0 = time.perf_counter()
    vecs = embedder.embed(texts)
    print(f"  embedded {len(texts)} {name} texts in {time.perf_counter() - t0:.0f}s", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    return vecs


def one_chunk(doc_id: str, text: str) -> Chunk:
    return Chunk(id=f"{doc_id}#0", doc_id=doc_id, text=text, source=doc_id, title="", content_hash=doc_id)


def ingest(index: TenantIndex, doc_ids: Sequence[str], texts: Sequence[str], vecs: np.ndarray) -> None:
    batch = 2000  # BM25 is rebuilt once per apply(): batch the documents
    for start in range(0, len(doc_ids), batch):
        index.apply(
            upserts=[
                (d, [one_chunk(d, t)], vecs[i : i + 1])
                for i, (d, t) in enumerate(zip(doc_ids, texts, strict=True))
                if start <= i < start + batch
            ]
        )


def ndcg_at(ranked: Sequence[str], rel: set[str], k: int = 10) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if d in rel)
    idcg = sum(1 / math.log2(i + 2) for i in range(min(k, len(rel))))
    return dcg / idcg


def mrr_at(ranked: Sequence[str], rel: set[str], k: int = 10) -> float:
    return next((1 / (i + 1) for i, d in enumerate(ranked[:k]) if d in rel), 0.0)


def recall_at(ranked: Sequence[str], rel: set[str], k: int = 100) -> float:
    return len(set(ranked[:k]) & rel) / len(rel)


def auroc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    scores = np.concatenate([pos, neg])
    ranks = np.empty(len(scores))
    order = np.argsort(scores, kind="mergesort")
    ranks[order] = np.arange(1, len(scores) + 1)
    for v in np.unique(scores):  # average ranks of ties
        mask = scores == v
        ranks[mask] = ranks[mask].mean()
    n_pos, n_neg = len(pos), len(neg)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ------------------------------------------------------------------------------------------------
# SciFact


def load_scifact() -> tuple[list[str], list[str], dict[str, str], dict[str, dict[str, set[str]]]]:
    d = DATA / "scifact"
    docs = [json.loads(line) for line in gzip.open(d / "corpus.jsonl.gz", "rt")]
    queries = {q["_id"]: q["text"] for q in map(json.loads, open(d / "queries.jsonl"))}
    qrels: dict[str, dict[str, set[str]]] = {}
    for split in ("train", "test"):
        rel: dict[str, set[str]] = collections.defaultdict(set)
        for line in list(open(d / "qrels" / f"{split}.tsv"))[1:]:
            qid, cid, score = line.rstrip("\n").split("\t")
            if int(score) > 0:
                rel[qid].add(cid)
        qrels[split] = dict(rel)
    return [x["_id"] for x in docs], [f"{x['title']} {x['text']}".strip() for x in docs], queries, qrels


def rankings(res: RetrievalResult) -> dict[str, list[str]]:
    """bm25 / dense / fused doc rankings from one search with every candidate returned as a hit."""
    by = {
        "bm25": sorted((h for h in res.hits if h.bm25_rank), key=lambda h: h.bm25_rank or 0),
        "dense": sorted((h for h in res.hits if h.dense_rank), key=lambda h: h.dense_rank or 0),
        "fused": res.hits,
    }
    return {name: [h.chunk.doc_id for h in hits] for name, hits in by.items()}


def scifact(embedder: Embedder, tune: bool) -> None:
    print("== SciFact (BEIR test split, 300 queries; chunk = title + ' ' + abstract)")
    doc_ids, texts, queries, qrels = load_scifact()
    vecs = cached_embed(embedder, texts, "scifact-corpus")
    qids = sorted(set(qrels["test"]) | (set(qrels["train"]) if tune else set()))
    qmat = cached_embed(embedder, [queries[q] for q in qids], "scifact-queries")
    qvecs = dict(zip(qids, qmat, strict=True))
    with tempfile.TemporaryDirectory() as tmp:
        store = IndexStore(make_chroma_client(tmp), embedder.model_id)
        index = store.tenant("scifact")
        t0 = time.perf_counter()
        ingest(index, doc_ids, texts, vecs)
        print(f"  ingested {len(index)} chunks into Chroma + BM25 in {time.perf_counter() - t0:.1f}s")

        def run(split: str, params: FusionParams | None = None) -> dict[str, dict[str, float]]:
            if params is not None:
                index._fusion = params  # bench-only: evaluate other fusion settings on one ingest
            acc: dict[str, dict[str, list[float]]] = collections.defaultdict(
                lambda: collections.defaultdict(list)
            )
            for qid, rel in qrels[split].items():
                res = index.search(queries[qid], qvecs[qid], top_k=200, candidates=100)
                for name, ranked in rankings(res).items():
                    acc[name]["ndcg@10"].append(ndcg_at(ranked, rel))
                    acc[name]["recall@100"].append(recall_at(ranked, rel))
                    acc[name]["mrr@10"].append(mrr_at(ranked, rel))
            return {n: {m: float(np.mean(v)) for m, v in ms.items()} for n, ms in acc.items()}

        default = FusionParams()
        if tune:
            print("  fusion grid on SciFact *train* queries (pick here, report on test):")
            grid = [
                FusionParams(method="convex", alpha=a) for a in (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6)
            ]
            grid += [
                FusionParams(method="rrf", k=k, dense_weight=w) for k in (10, 20, 60) for w in (0.6, 0.8, 1.0)
            ]
            for p in grid:
                tr, te = run("train", p)["fused"]["ndcg@10"], run("test", p)["fused"]["ndcg@10"]
                print(
                    f"    {p.method:6} alpha={p.alpha:.2f} k={p.k:3} wd={p.dense_weight:.1f}  "
                    f"train nDCG@10 {tr:.4f}  test {te:.4f}"
                )
        t0 = time.perf_counter()
        results = run("test", default)
        per_query_ms = (time.perf_counter() - t0) / len(qrels["test"]) * 1000
        for name in ("bm25", "dense", "fused"):
            m = results[name]
            print(
                f"  {name:6} nDCG@10 {m['ndcg@10']:.4f}  recall@100 {m['recall@100']:.4f}  "
                f"MRR@10 {m['mrr@10']:.4f}"
            )
        rrf = run("test", replace(default, method="rrf"))["fused"]
        print(f"  (rrf k=60 equal weights: nDCG@10 {rrf['ndcg@10']:.4f}  recall@100 {rrf['recall@100']:.4f})")
        print(
            f"  fusion={default.method} alpha={default.alpha}; search {per_query_ms:.1f} ms/query "
            "(200 hits returned, query embedding excluded)"
        )


# ------------------------------------------------------------------------------------------------
# PubMedQA: answerable vs unanswerable confidence


def pubmedqa_features(embedder: Embedder) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, answerable labels, and fit/eval split for PubMedQA's 1,000 questions."""
    items = json.load(gzip.open(DATA / "pubmedqa" / "ori_pqal.json.gz"))
    pmids = sorted(items)
    rng = random.Random(13)
    ingested = set(rng.sample(pmids, len(pmids) // 2))
    fit_half = set(rng.sample(pmids, len(pmids) // 2))  # independent of `ingested`: both labels in each
    contexts = [" ".join(items[p]["CONTEXTS"]) for p in pmids]
    cvecs = cached_embed(embedder, contexts, "pubmedqa-contexts")
    qvecs = cached_embed(embedder, [items[p]["QUESTION"] for p in pmids], "pubmedqa-questions")
    with tempfile.TemporaryDirectory() as tmp:
        index = IndexStore(make_chroma_client(tmp), embedder.model_id).tenant("pubmedqa")
        keep = [i for i, p in enumerate(pmids) if p in ingested]
        ingest(index, [pmids[i] for i in keep], [contexts[i] for i in keep], cvecs[keep])
        feats = []
        for i, p in enumerate(pmids):
            res = index.search(items[p]["QUESTION"], qvecs[i], top_k=5)
            assert res.features is not None
            feats.append(res.features.vector())
    labels = np.array([p in ingested for p in pmids])
    is_fit = np.array([p in fit_half for p in pmids])
    return np.array(feats), labels, is_fit


def confidence_eval(embedder: Embedder) -> None:
    print("== PubMedQA confidence (half the contexts ingested, one chunk each; constants of confidence.py)")
    x, y, is_fit = pubmedqa_features(embedder)
    intercept, coef = conf.INTERCEPT, np.array(conf.COEFFICIENTS)
    threshold = conf.DEFAULT_REFUSAL_THRESHOLD
    scores = 1 / (1 + np.exp(-(intercept + x @ coef)))
    for name, mask in (("half A", is_fit), ("half B", ~is_fit)):
        pos, neg = scores[mask & y], scores[mask & ~y]
        print(
            f"  {name:13} AUROC {auroc(pos, neg):.4f}  threshold {threshold:.3f}: refused "
            f"{np.mean(neg < threshold):.1%} of {len(neg)} unanswerable, "
            f"{np.mean(pos < threshold):.1%} of {len(pos)} answerable"
        )
    held = ~is_fit
    for j, name in enumerate(conf.FEATURE_NAMES):
        print(f"    single feature {name:12} half B AUROC {auroc(x[held & y, j], x[held & ~y, j]):.4f}")


# ------------------------------------------------------------------------------------------------
# Timing with synthetic chunks


def synthetic_corpus(n: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    vocab = [f"w{i}" for i in range(30000)]
    zipf = 1 / np.arange(1, len(vocab) + 1)
    zipf /= zipf.sum()
    words = rng.choice(len(vocab), size=(n, 120), p=zipf)
    texts = [" ".join(vocab[w] for w in row) for row in words]
    vecs = rng.standard_normal((n, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return texts, vecs


def timing(sizes: Sequence[int]) -> None:
    print("== Search latency, synthetic chunks (120 Zipf-distributed words, random 384-d vectors)")
    rng = np.random.default_rng(0)
    for n in sizes:
        _time_size(n, rng)


def _time_size(n: int, rng: np.random.Generator) -> None:
    texts, vecs = synthetic_corpus(n, rng)
    with tempfile.TemporaryDirectory() as tmp:
        index = IndexStore(make_chroma_client(tmp), "synthetic").tenant("t")
        t0 = time.perf_counter()
        ingest(index, [f"d{i}" for i in range(n)], texts, vecs)
        ingest_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        index.apply(upserts=[("d0", [one_chunk("d0", texts[1])], vecs[1:2])])
        change_s = time.perf_counter() - t0
        queries = [" ".join(texts[int(i)].split()[:8]) for i in rng.integers(0, n, 60)]
        qv = rng.standard_normal((60, 384)).astype(np.float32)
        lat = _measure(lambda i: index.search(queries[i], qv[i], top_k=8), 60)
        lat_f = _measure(lambda i: index.search(queries[i], qv[i], top_k=8, where={"kind": "text"}), 60)
        print(
            f"  {n:>7} chunks: search p50 {lat[0]:.1f} ms p95 {lat[1]:.1f} ms | with where filter "
            f"p50 {lat_f[0]:.1f} ms | ingest {ingest_s:.0f}s | one-doc change {change_s:.2f}s",
            flush=True,
        )


def _measure(fn: Callable[[int], object], n: int) -> tuple[float, float]:
    for i in range(5):
        fn(i)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), float(np.quantile(times, 0.95))


def query_embed_latency(embedder: Embedder) -> None:
    q = "Does vitamin D supplementation reduce the risk of fractures in older adults?"
    p50, p95 = _measure(lambda i: embedder.embed([q]), 50)
    print(f"== query embedding ({embedder.model_id}): p50 {p50:.1f} ms p95 {p95:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tune", action="store_true", help="fusion grid on SciFact train queries")
    ap.add_argument("--timing", action="store_true", help="search latency at 1k/10k/100k chunks")
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--only-timing", action="store_true")
    args = ap.parse_args()
    embedder = LocalMiniLMEmbedder()
    if not args.only_timing:
        if not (DATA / "scifact").is_dir() or not (DATA / "pubmedqa").is_dir():
            sys.exit(f"data not found under {DATA}")
        query_embed_latency(embedder)
        scifact(embedder, args.tune)
        confidence_eval(embedder)
    if args.timing or args.only_timing:
        timing([int(s) for s in args.sizes.split(",")])


if __name__ == "__main__":
    main()
