"""How often the semantic cache would serve a wrong answer, measured on labelled question pairs.

    python bench/cache_quality.py                 # all 80,854 QQP pairs + GPTCache's 999 (~5 min once)
    python bench/cache_quality.py --pairs 20000   # a seeded sample, quicker
    python bench/cache_quality.py --write         # also rewrite bench/CACHE_RESULTS.md

Data: ../shared/data/gptcache-qqp (see its SOURCE.md). Both texts of a pair are embedded with the
gateway's own embedder (MiniLM int8), exactly as the cache embeds a last user turn. A "hit" is what
`middleware/cache.py` serves: cosine >= t, and with `verify_paraphrase` (the default) the cached
question also passes `gateway.cache.paraphrase.mismatch`. Curves are printed with and without it.

- QQP, pairwise: for every labelled pair, would text_b hit an entry cached for text_a? A hit on a
  label-1 pair is right, on a label-0 pair wrong. precision = right / hits, recall = right / label-1
  pairs. The pairs are split in two seeded halves by question: pairs that share a question (and
  the pairs those share one with, and so on) land in the same half, so no question text is in
  both. The default threshold is picked on the tuning half (the lowest t on the grid whose
  precision is >= the target) and reported on the held-out half with a one-sided 95% Wilson lower
  bound, so the published figure is not the one it was tuned on. QQP's label-0 pairs were
  chosen by Quora to look alike (they share a topic), which makes this a harder test than random
  traffic; QQP also carries label noise ("What is the purpose of life ?" / "What is the purpose of
  life?" is labelled a non-duplicate), which caps every method's precision.
- GPTCache's 999 pairs, the way its benchmark ran them: all `origin` texts are cached, then each
  `similar` text is looked up: the cache's candidates above t (most similar first, as many as the
  stage tries) are checked in order, and the first one served is a right hit when it is the
  pair's own origin, a wrong hit otherwise; nothing served is a miss.

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

from gateway.cache.paraphrase import mismatch, question_shape  # noqa: E402
from gateway.cache.settings import DEFAULT_SIMILARITY_THRESHOLD  # noqa: E402
from gateway.retrieval.embedder import Embedder, LocalMiniLMEmbedder  # noqa: E402
from middleware.cache import CANDIDATES  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "gptcache-qqp"
CACHE = ROOT / ".cache" / "bench"
RESULTS = ROOT / "bench" / "CACHE_RESULTS.md"
# 0.70 .. 0.99 by 0.01, with 0.985 and 0.995 where the curve flattens.
THRESHOLDS = sorted([round(0.70 + 0.01 * i, 2) for i in range(30)] + [0.985, 0.995])
TARGET_PRECISION = 0.95
Z_95_ONE_SIDED = 1.645


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

    @property
    def precision_lower_bound(self) -> float:
        """One-sided 95% Wilson lower bound of the precision."""
        if not self.hits:
            return 0.0
        n, p, z = self.hits, self.precision, Z_95_ONE_SIDED
        centre = p + z * z / (2 * n)
        spread = z * ((p * (1 - p) + z * z / (4 * n)) / n) ** 0.5
        return (centre - spread) / (1 + z * z / n)


def pairwise_curve(sims: np.ndarray, labels: np.ndarray, served: np.ndarray) -> list[Point]:
    """served: whether the pair passes the checks after similarity (all True for cosine alone)."""
    positives = int(labels.sum())
    points = []
    for t in THRESHOLDS:
        hit = (sims >= t) & served
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


def split_by_question(rows: Sequence[dict[str, object]], seed: int) -> np.ndarray:
    """True for the tuning half: whole connected groups of pairs that share questions, seeded."""
    parent: dict[str, str] = {}

    def root(text: str) -> str:
        parent.setdefault(text, text)
        while parent[text] != text:
            parent[text] = parent[parent[text]]
            text = parent[text]
        return text

    for r in rows:
        a, b = root(str(r["text_a"])), root(str(r["text_b"]))
        if a != b:
            parent[a] = b
    groups = sorted({root(str(r["text_a"])) for r in rows})
    rng = random.Random(seed)
    tuning = {g for g in groups if rng.random() < 0.5}
    return np.array([root(str(r["text_a"])) in tuning for r in rows])


@dataclass(slots=True)
class Curves:
    tune: list[Point]
    held_out: list[Point]
    tune_cosine: list[Point]  # cosine alone (verify_paraphrase: false)
    held_out_cosine: list[Point]
    pairs: int
    held_out_pairs: int


def qqp(embedder: Embedder, pairs: int, seed: int) -> Curves:
    rows = load_qqp(pairs, seed)
    texts = sorted({str(r["text_a"]) for r in rows} | {str(r["text_b"]) for r in rows})
    position = {t: i for i, t in enumerate(texts)}
    vectors = cached_embed(embedder, texts, f"qqp-{len(rows)}-{seed}")
    a = vectors[[position[str(r["text_a"])] for r in rows]]
    b = vectors[[position[str(r["text_b"])] for r in rows]]
    sims = np.einsum("ij,ij->i", a, b)
    labels = np.array([int(r["label"]) for r in rows])  # type: ignore[call-overload]
    shapes = {t: question_shape(t) for t in texts}
    verified = np.array([mismatch(shapes[str(r["text_a"])], shapes[str(r["text_b"])]) is None for r in rows])
    everything = np.ones(len(rows), dtype=bool)
    tune = split_by_question(rows, seed)
    held = ~tune
    return Curves(
        pairwise_curve(sims[tune], labels[tune], verified[tune]),
        pairwise_curve(sims[held], labels[held], verified[held]),
        pairwise_curve(sims[tune], labels[tune], everything[tune]),
        pairwise_curve(sims[held], labels[held], everything[held]),
        len(rows),
        int(held.sum()),
    )


def gptcache_999(embedder: Embedder, verify: bool) -> list[Point]:
    pairs = json.loads((DATA / "mock_data.json").read_text(encoding="utf-8"))
    origins = cached_embed(embedder, [p["origin"] for p in pairs], "gptcache-origin")
    similar = cached_embed(embedder, [p["similar"] for p in pairs], "gptcache-similar")
    sims = similar @ origins.T
    ranked = np.argsort(-sims, axis=1)[:, :CANDIDATES]  # the entries the stage would try, in order
    origin_shapes = [question_shape(p["origin"]) for p in pairs]
    points = []
    for t in THRESHOLDS:
        right = wrong = 0
        for i, p in enumerate(pairs):
            shape = question_shape(p["similar"])
            for j in ranked[i]:
                if sims[i, j] < t:
                    break
                if verify and mismatch(origin_shapes[j], shape) is not None:
                    continue
                right, wrong = (right + 1, wrong) if j == i else (right, wrong + 1)
                break
        points.append(Point(t, right + wrong, right, wrong, len(pairs)))
    return points


def pick_threshold(points: list[Point]) -> float | None:
    """The lowest threshold whose precision reaches the target, else None."""
    for p in points:
        if p.hits and p.precision >= TARGET_PRECISION:
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
    parser.add_argument("--pairs", type=int, default=0, help="QQP pairs to sample (0 = all 80,854)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="rewrite bench/CACHE_RESULTS.md")
    args = parser.parse_args()

    embedder = LocalMiniLMEmbedder()
    curves = qqp(embedder, args.pairs, args.seed)
    g999, g999_cosine = gptcache_999(embedder, verify=True), gptcache_999(embedder, verify=False)
    picked = pick_threshold(curves.tune)
    default = DEFAULT_SIMILARITY_THRESHOLD
    h, g = at(curves.held_out, default), at(g999, default)
    hc = at(curves.held_out_cosine, default)
    n, n_held = curves.pairs, curves.held_out_pairs
    picked_text = (
        f"the lowest threshold with precision >= {TARGET_PRECISION} there is **{picked:g}** "
        f"({at(curves.tune, picked).precision:.4f}; at the default "
        f"{at(curves.tune, default).precision:.4f})"
        if picked is not None
        else f"no threshold up to {THRESHOLDS[-1]} reaches precision {TARGET_PRECISION} there"
    )
    summary = (
        f"Default `similarity_threshold` = **{default:g}** with `verify_paraphrase: true` "
        f"(gateway/cache/settings.py). On the QQP tuning half, {picked_text}.\n\n"
        f"- QQP held-out half ({h.positives} duplicates among {n_held} pairs), at the default: "
        f"precision **{h.precision:.4f}** (one-sided 95% lower bound {h.precision_lower_bound:.4f}), "
        f"recall **{h.recall:.4f}** ({h.right} right hits, {h.wrong} wrong hits). Cosine alone at "
        f"the same threshold: precision {hc.precision:.4f}, recall {hc.recall:.4f}.\n"
        f"- GPTCache's 999 pairs at {default:g}: {g.right} right hits, {g.wrong} wrong hits, "
        f"{999 - g.hits} misses (GPTCache's published run at its threshold 0.8: 904 right, 92 wrong)."
    )
    header = "| threshold | hits | right | wrong | precision | recall |"
    sample = "all" if not args.pairs else f"a seeded sample (seed {args.seed}) of"
    doc = "\n\n".join(
        [
            "# Semantic cache quality",
            "Generated by `python bench/cache_quality.py --write`; see the script's docstring for "
            "the method. Embedder: the gateway's all-MiniLM-L6-v2 int8 ONNX. A hit is cosine >= "
            "threshold between the cached question and the new one and, with `verify_paraphrase` "
            "(the default), the questions pass gateway/cache/paraphrase.py (same kind of question, "
            "numbers, negation, people and content words in the same order).",
            summary,
            f"## QQP held-out half ({n_held} of {sample} {n} labelled pairs), verify_paraphrase on\n\n"
            "right = hit on a duplicate pair, wrong = hit on a non-duplicate pair, recall = right / "
            "duplicates. The precision a deployment sees also depends on how many of its near-miss "
            "questions are true paraphrases; QQP's negatives are deliberately similar questions.\n\n"
            + table(curves.held_out, header, default),
            "## QQP held-out half, cosine alone (verify_paraphrase: false)\n\n"
            + table(curves.held_out_cosine, header, default),
            f"## QQP tuning half ({n - n_held} pairs), verify_paraphrase on\n\n"
            + table(curves.tune, header, default),
            "## QQP tuning half, cosine alone\n\n" + table(curves.tune_cosine, header, default),
            "## GPTCache mock_data.json (999 pairs, every one meant to hit), verify_paraphrase on\n\n"
            "All origins cached, each paraphrase looked up; the entry served is right when it is the "
            "pair's own origin. recall = right / 999. ChatGPT's paraphrases reword freely, so most "
            "fail the same-content-words check: this cache trades recall for not serving wrong "
            "answers.\n\n" + table(g999, header, default),
            "## GPTCache mock_data.json, cosine alone\n\n" + table(g999_cosine, header, default),
        ]
    )
    print(doc)
    if args.write:
        RESULTS.write_text(doc + "\n", encoding="utf-8")
        print(f"\nwrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
