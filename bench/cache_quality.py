"""How often the semantic cache would serve a wrong answer, measured on labelled question pairs.

    python bench/cache_quality.py                 # seeded sample of 20,000 QQP pairs + GPTCache's 999
    python bench/cache_quality.py --pairs 0       # all 80,854 pairs (about 4x longer to embed)
    python bench/cache_quality.py --write         # also rewrite bench/CACHE_RESULTS.md

Data: ../shared/data/gptcache-qqp (see its SOURCE.md). Both texts of a pair are embedded with the
gateway's own embedder (MiniLM int8), exactly as the cache embeds a last user turn, and a "hit" is
cosine >= t, the same comparison `gateway.cache` makes.

- QQP, pairwise: for every labelled pair, would text_b hit an entry cached for text_a? A hit on a
  label-1 pair is right, on a label-0 pair wrong. precision = right / hits, recall = right / label-1
  pairs. The sample is split in two seeded halves: the threshold is picked on the first (lowest t
  on a 0.01 grid whose precision >= the target) and reported on the second, so the published
  figure is not the one it was tuned on. QQP's label-0 pairs were chosen by Quora to look alike
  (they share a topic), which makes this a harder test than random traffic.
- GPTCache's 999 pairs, the way its benchmark ran them: all `origin` texts are cached, then each
  `similar` text is looked up; the nearest entry above t is a right hit when it is the pair's own
  origin, a wrong hit otherwise, and below t a miss.

Embeddings are cached under .cache/bench/ (gitignored).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.cache.settings import DEFAULT_SIMILARITY_THRESHOLD  # noqa: E402
from gateway.retrieval.embedder import Embedder, LocalMiniLMEmbedder  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "gptcache-qqp"
CACHE = ROOT / ".cache" / "bench"
RESULTS = ROOT / "bench" / "CACHE_RESULTS.md"
# 0.70 .. 0.98 by 0.01, then finer where precision plateaus.
THRESHOLDS = [round(0.70 + 0.01 * i, 2) for i in range(29)] + [0.985, 0.99, 0.993, 0.995, 0.997]
TARGET_PRECISION = 0.95


def cached_embed(embedder: Embedder, texts: Sequence[str], name: str) -> np.ndarray:
    key = hashlib.sha256("\x1f".join([embedder.model_id, *texts]).encode()).hexdigest()[:16]
    path = CACHE / f"{name}-{key}.npy"
    if path.exists():
        return np.load(path)
    started = time.perf_counter()
    vectors = np.empty((len(texts), embedder.dim), dtype=np.float32)
    step = 2048
    for start in range(0, len(texts), step):
        vectors[start : start + step] = embedder.embed(texts[start : start + step])
        done = min(start + step, len(texts))
        rate = done / (time.perf_counter() - started)
        print(f"  {name}: {done}/{len(texts)} embedded ({rate:.0f}/s)", file=sys.stderr, flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


@dataclass(slots=True)
class Point:
    threshold: float
    hits: int
    right: int
    wrong: int
    positives: int

    @property
    def precision(self) -> float:
        return self.right / self.hits if self.hits else 1.0

    @property
    def recall(self) -> float:
        return self.right / self.positives if self.positives else 0.0


def pairwise_curve(sims: np.ndarray, labels: np.ndarray) -> list[Point]:
    positives = int(labels.sum())
    points = []
    for t in THRESHOLDS:
        hit = sims >= t
        right = int((hit & (labels == 1)).sum())
        wrong = int((hit & (labels == 0)).sum())
        points.append(Point(t, right + wrong, right, wrong, positives))
    return points


def load_qqp(pairs: int, seed: int) -> list[dict[str, object]]:
    with gzip.open(DATA / "qqp_pairs.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    if pairs and pairs < len(rows):
        rows = random.Random(seed).sample(rows, pairs)
    return rows


def qqp(embedder: Embedder, pairs: int, seed: int) -> tuple[list[Point], list[Point], list[Point], int]:
    """Curves on the tuning half, the held-out half and the whole sample."""
    rows = load_qqp(pairs, seed)
    texts = sorted({str(r["text_a"]) for r in rows} | {str(r["text_b"]) for r in rows})
    position = {t: i for i, t in enumerate(texts)}
    vectors = cached_embed(embedder, texts, f"qqp-{len(rows)}-{seed}")
    a = vectors[[position[str(r["text_a"])] for r in rows]]
    b = vectors[[position[str(r["text_b"])] for r in rows]]
    sims = np.einsum("ij,ij->i", a, b)
    labels = np.array([int(r["label"]) for r in rows])  # type: ignore[call-overload]
    half = len(rows) // 2
    return (
        pairwise_curve(sims[:half], labels[:half]),
        pairwise_curve(sims[half:], labels[half:]),
        pairwise_curve(sims, labels),
        len(rows),
    )


def gptcache_999(embedder: Embedder) -> list[Point]:
    pairs = json.loads((DATA / "mock_data.json").read_text(encoding="utf-8"))
    origins = cached_embed(embedder, [p["origin"] for p in pairs], "gptcache-origin")
    similar = cached_embed(embedder, [p["similar"] for p in pairs], "gptcache-similar")
    sims = similar @ origins.T
    nearest = sims.argmax(axis=1)
    best = sims[np.arange(len(pairs)), nearest]
    own = nearest == np.arange(len(pairs))
    points = []
    for t in THRESHOLDS:
        hit = best >= t
        right, wrong = int((hit & own).sum()), int((hit & ~own).sum())
        points.append(Point(t, right + wrong, right, wrong, len(pairs)))
    return points


def pick_threshold(points: list[Point]) -> float | None:
    """The lowest threshold whose precision reaches the target, or None when none does."""
    for p in points:
        if p.precision >= TARGET_PRECISION and p.hits:
            return p.threshold
    return None


def table(points: list[Point], header: str, mark: float) -> str:
    lines = [header, "| --- | --- | --- | --- | --- | --- |"]
    for p in points:
        star = " **(default)**" if abs(p.threshold - mark) < 1e-9 else ""
        lines.append(
            f"| {p.threshold:g}{star} | {p.hits} | {p.right} | {p.wrong} | {p.precision:.4f} | "
            f"{p.recall:.4f} |"
        )
    return "\n".join(lines)


def at(points: list[Point], t: float) -> Point:
    return next(p for p in points if abs(p.threshold - t) < 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=20000, help="QQP pairs to sample (0 = all 80,854)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="rewrite bench/CACHE_RESULTS.md")
    args = parser.parse_args()

    embedder = LocalMiniLMEmbedder()
    tune, held_out, whole, n = qqp(embedder, args.pairs, args.seed)
    g999 = gptcache_999(embedder)
    picked = pick_threshold(tune)
    default = DEFAULT_SIMILARITY_THRESHOLD
    h, g = at(held_out, default), at(g999, default)
    sample = "all" if not args.pairs else f"a seeded sample (seed {args.seed}) of"
    picked_text = (
        f"the lowest threshold with precision >= {TARGET_PRECISION} there is {picked:.3f}, which "
        f"gives {at(held_out, picked).precision:.4f} precision on the held-out half: above about "
        "0.98 the differences are noise (a handful of pairs), not a better threshold"
        if picked is not None
        else f"no threshold up to {THRESHOLDS[-1]} reaches precision {TARGET_PRECISION} there"
    )
    summary = (
        f"Default `similarity_threshold` = **{default:.2f}** (gateway/cache/settings.py says why). On "
        f"the QQP tuning half, {picked_text}.\n\n"
        f"- QQP held-out half ({h.positives} duplicates of {n - n // 2} pairs): "
        f"precision **{h.precision:.4f}**, recall **{h.recall:.4f}** ({h.right} right hits, "
        f"{h.wrong} wrong hits).\n"
        f"- GPTCache's 999 pairs at {default:.2f}: {g.right} right hits, {g.wrong} wrong hits, "
        f"{999 - g.hits} misses (GPTCache's published run at its threshold 0.8: 904 right, 92 wrong)."
    )
    header = "| threshold | hits | right | wrong | precision | recall |"
    doc = "\n\n".join(
        [
            "# Semantic cache quality",
            "Generated by `python bench/cache_quality.py --write`; see the script's docstring for "
            "the method. Embedder: the gateway's all-MiniLM-L6-v2 int8 ONNX. A hit is cosine >= "
            "threshold between the cached question and the new one.",
            summary,
            f"## QQP, {sample} {n} labelled pairs: held-out half ({n - n // 2} pairs)\n\n"
            "right = hit on a duplicate pair, wrong = hit on a non-duplicate pair, recall = right / "
            "duplicates. The precision a deployment sees also depends on how many of its near-miss "
            "questions are true paraphrases; QQP's negatives are deliberately similar questions.\n\n"
            + table(held_out, header, default),
            f"## QQP, tuning half ({n // 2} pairs)\n\n" + table(tune, header, default),
            f"## QQP, whole sample ({n} pairs)\n\n" + table(whole, header, default),
            "## GPTCache mock_data.json (999 pairs, every one meant to hit)\n\n"
            "All origins cached, each paraphrase looked up; the nearest entry above the threshold is "
            "right when it is the pair's own origin. recall = right / 999.\n\n"
            + table(g999, header, default),
        ]
    )
    print(doc)
    if args.write:
        RESULTS.write_text(doc + "\n", encoding="utf-8")
        print(f"\nwrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
