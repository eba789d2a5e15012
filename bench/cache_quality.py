"""How often the semantic cache would serve a wrong answer, measured on labelled question pairs.

    python bench/cache_quality.py                 # all 80,854 QQP pairs + GPTCache's 999 (~10 min once)
    python bench/cache_quality.py --pairs 20000   # a seeded sample, quicker
    python bench/cache_quality.py --write         # also rewrite bench/CACHE_RESULTS.md
    python bench/cache_quality.py --fit           # refit the paraphrase judge on the tuning half

Data: ../shared/data/gptcache-qqp (see its SOURCE.md). Both texts of a pair are brought to the
cache's comparison form (gateway/cache/normalize.py) and embedded with the gateway's own embedder
(MiniLM int8), exactly as the cache embeds a last user turn. A "hit" is what `middleware/cache.py`
serves under each `paraphrase_check`:
- `rules` (the default): cosine >= t and the questions pass `gateway.cache.paraphrase.mismatch`;
- `judge`: cosine >= the judge's similarity floor, same numbers and negations, and the judge's
  probability (gateway/cache/judge.py) >= p; its curve is over p;
- `off`: cosine >= t alone.

- QQP, pairwise: for every labelled pair, would text_b hit an entry cached for text_a? A hit on a
  label-1 pair is right, on a label-0 pair wrong. precision = right / hits, recall = right / label-1
  pairs. The pairs are split in two seeded halves by question: pairs that share a question (and
  the pairs those share one with, and so on) land in the same half, so no question text is in
  both. Defaults are picked on the tuning half (the lowest t on the grid whose precision is >= the
  target) and reported on the held-out half with a one-sided 95% Wilson lower bound, so the
  published figure is not the one it was tuned on; the judge is fitted on the tuning half only.
  QQP's label-0 pairs were chosen by Quora to look alike (they share a topic), which makes this a
  harder test than random traffic; QQP also carries label noise ("What is the purpose of life ?" /
  "What is the purpose of life?" is labelled a non-duplicate), which caps every method's precision.
- GPTCache's 999 pairs, the way its benchmark ran them: all `origin` texts are cached, then each
  `similar` text is looked up: the cache's candidates above the floor (most similar first, as many
  as the stage tries) are checked in order, and the first one served is a right hit when it is the
  pair's own origin (or the very same text), a wrong hit otherwise; nothing served is a miss.

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

from gateway.cache.judge import (  # noqa: E402
    FORMAT_VERSION,
    LEXICAL_FEATURES,
    WEIGHTS_PATH,
    ParaphraseJudge,
    lexical_features,
    load_judge,
    pair_features,
)
from gateway.cache.normalize import normalize_question  # noqa: E402
from gateway.cache.paraphrase import QuestionShape, mismatch, question_shape  # noqa: E402
from gateway.cache.settings import (  # noqa: E402
    DEFAULT_JUDGE_PROBABILITY,
    DEFAULT_SIMILARITY_THRESHOLD,
    JUDGE_SIMILARITY_FLOOR,
)
from gateway.retrieval.embedder import Embedder, LocalMiniLMEmbedder  # noqa: E402
from middleware.cache import CANDIDATES  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "gptcache-qqp"
CACHE = ROOT / ".cache" / "bench"
RESULTS = ROOT / "bench" / "CACHE_RESULTS.md"
# 0.70 .. 0.99 by 0.01, with 0.985 and 0.995 where the curve flattens.
THRESHOLDS = sorted([round(0.70 + 0.01 * i, 2) for i in range(30)] + [0.985, 0.995])
# The judge's curve is over its probability, at its similarity floor.
PROBABILITIES = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.875, 0.9, 0.925, 0.95]
# L2 strength of the judge's logistic fit (per pair of the tuning half, Newton's method).
JUDGE_L2 = 1.0
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


def curve(grid: Sequence[float], scores: np.ndarray, labels: np.ndarray, served: np.ndarray) -> list[Point]:
    """A point per value of the grid: hits are pairs with score >= it that also pass `served`."""
    positives = int(labels.sum())
    points = []
    for t in grid:
        hit = (scores >= t) & served
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
class Pairs:
    """QQP pairs as the cache sees them: normalised, embedded, shaped."""

    cached: np.ndarray  # embeddings of text_a
    new: np.ndarray  # embeddings of text_b
    cached_shapes: list[QuestionShape]
    new_shapes: list[QuestionShape]
    labels: np.ndarray
    tune: np.ndarray  # True for the tuning half

    @property
    def cosine(self) -> np.ndarray:
        return np.einsum("ij,ij->i", self.cached, self.new)

    def features(self) -> np.ndarray:
        lexical = np.array(
            [lexical_features(a, b) for a, b in zip(self.cached_shapes, self.new_shapes, strict=True)],
            dtype=np.float32,
        )
        return pair_features(self.cached, self.new, lexical).astype(np.float64)


def qqp_pairs(embedder: Embedder, pairs: int, seed: int) -> Pairs:
    rows = load_qqp(pairs, seed)
    normal: dict[str, str] = {}
    for r in rows:
        for field in ("text_a", "text_b"):
            text = str(r[field])
            if text not in normal:
                normal[text] = normalize_question(text)
    texts = sorted(set(normal.values()))
    position = {t: i for i, t in enumerate(texts)}
    vectors = cached_embed(embedder, texts, f"qqp-normalised-{len(rows)}-{seed}")
    shapes = {t: question_shape(t) for t in texts}
    a = [normal[str(r["text_a"])] for r in rows]
    b = [normal[str(r["text_b"])] for r in rows]
    return Pairs(
        vectors[[position[t] for t in a]],
        vectors[[position[t] for t in b]],
        [shapes[t] for t in a],
        [shapes[t] for t in b],
        np.array([int(r["label"]) for r in rows]),  # type: ignore[call-overload]
        split_by_question(rows, seed),
    )


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 30) -> np.ndarray:
    """L2-regularised logistic regression by Newton's method (a few hundred features: exact and fast)."""
    w = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(x @ w)))
        gradient = x.T @ (p - y) + l2 * w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(x.shape[1])
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-7:
            break
    return w


def fit_judge(embedder: Embedder, data: Pairs) -> None:
    """Fit on the tuning half only and write the weights the gateway ships."""
    weights = fit_logistic(data.features()[data.tune], data.labels[data.tune], JUDGE_L2)
    WEIGHTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "format": FORMAT_VERSION,
        "embedder_id": embedder.model_id,
        "lexical_features": list(LEXICAL_FEATURES),
        "fitted_on": "QQP pairs (GPTCache's similiar_qqp_full), tuning half of bench/cache_quality.py's "
        f"split by question, seed 7: {int(data.tune.sum())} pairs; logistic, L2 {JUDGE_L2}",
        "licence": "weights derived from Quora Question Pairs labels (Quora's terms: non-commercial); "
        "the question texts themselves are not included",
        "weights": [round(float(w), 6) for w in weights],
    }
    WEIGHTS_PATH.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    load_judge.cache_clear()
    print(f"wrote {WEIGHTS_PATH.relative_to(ROOT)}", file=sys.stderr)


@dataclass(slots=True)
class Curves:
    rules: tuple[list[Point], list[Point]]  # (tuning half, held-out half)
    cosine: tuple[list[Point], list[Point]]
    judge: tuple[list[Point], list[Point]]
    pairs: int
    held_out_pairs: int


def qqp(data: Pairs, judge: ParaphraseJudge) -> Curves:
    cosine = data.cosine
    shapes = list(zip(data.cached_shapes, data.new_shapes, strict=True))
    rules_pass = np.array([mismatch(a, b) is None for a, b in shapes])
    hard_pass = np.array([a.numbers == b.numbers and a.negations == b.negations for a, b in shapes])
    z = data.features() @ np.concatenate(
        [judge.product, judge.difference, judge.lexical, [judge.cosine, judge.cosine_squared, judge.bias]]
    )
    probability = 1 / (1 + np.exp(-z))
    floor = (cosine >= JUDGE_SIMILARITY_FLOOR) & hard_pass
    everything = np.ones(len(cosine), dtype=bool)
    halves = (data.tune, ~data.tune)
    y = data.labels
    return Curves(
        tuple(curve(THRESHOLDS, cosine[h], y[h], rules_pass[h]) for h in halves),  # type: ignore[arg-type]
        tuple(curve(THRESHOLDS, cosine[h], y[h], everything[h]) for h in halves),  # type: ignore[arg-type]
        tuple(curve(PROBABILITIES, probability[h], y[h], floor[h]) for h in halves),  # type: ignore[arg-type]
        len(y),
        int((~data.tune).sum()),
    )


def gptcache_999(embedder: Embedder, check: str, judge: ParaphraseJudge) -> list[Point]:
    pairs = json.loads((DATA / "mock_data.json").read_text(encoding="utf-8"))
    origin_texts = [normalize_question(p["origin"]) for p in pairs]
    similar_texts = [normalize_question(p["similar"]) for p in pairs]
    origins = cached_embed(embedder, origin_texts, "gptcache-origin-normalised")
    similar = cached_embed(embedder, similar_texts, "gptcache-similar-normalised")
    sims = similar @ origins.T
    ranked = np.argsort(-sims, axis=1)[:, :CANDIDATES]  # the entries the stage would try, in order
    origin_shapes = [question_shape(t) for t in origin_texts]
    similar_shapes = [question_shape(t) for t in similar_texts]
    grid = PROBABILITIES if check == "judge" else THRESHOLDS
    probability: dict[tuple[int, int], float] = {}
    points = []
    for t in grid:
        right = wrong = 0
        for i in range(len(pairs)):
            for j in ranked[i]:
                cos = sims[i, j]
                if cos < (JUDGE_SIMILARITY_FLOOR if check == "judge" else t):
                    break
                cached, new = origin_shapes[j], similar_shapes[i]
                if check == "rules" and mismatch(cached, new) is not None:
                    continue
                if check == "judge":
                    if cached.numbers != new.numbers or cached.negations != new.negations:
                        continue
                    key = (i, int(j))
                    if key not in probability:
                        probability[key] = judge.probability(origins[j], cached, similar[i], new)
                    if probability[key] < t:
                        continue
                same = j == i or origin_texts[j] == origin_texts[i]
                right, wrong = (right + 1, wrong) if same else (right, wrong + 1)
                break
        points.append(Point(t, right + wrong, right, wrong, len(pairs)))
    return points


def pick(points: list[Point]) -> float | None:
    """The lowest grid value whose precision reaches the target, else None."""
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


def summary_line(label: str, p: Point, setting: str) -> str:
    return (
        f"| {label} | {setting} | {p.precision:.4f} ({p.precision_lower_bound:.4f}) | {p.recall:.4f} | "
        f"{p.right} / {p.wrong} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=0, help="QQP pairs to sample (0 = all 80,854)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="rewrite bench/CACHE_RESULTS.md")
    parser.add_argument("--fit", action="store_true", help="refit the judge on the tuning half first")
    args = parser.parse_args()

    embedder = LocalMiniLMEmbedder()
    data = qqp_pairs(embedder, args.pairs, args.seed)
    if args.fit:
        fit_judge(embedder, data)
    judge = load_judge(embedder.model_id)
    curves = qqp(data, judge)
    g999 = {check: gptcache_999(embedder, check, judge) for check in ("rules", "judge", "off")}
    rules_t, judge_p = DEFAULT_SIMILARITY_THRESHOLD, DEFAULT_JUDGE_PROBABILITY
    picked = {"rules": pick(curves.rules[0]), "judge": pick(curves.judge[0]), "off": pick(curves.cosine[0])}
    n, n_held = curves.pairs, curves.held_out_pairs
    picked_text = ", ".join(
        f"`{k}` {'none reaches it' if v is None else f'{v:g}'}" for k, v in picked.items()
    )
    header = "| threshold | hits | right | wrong | precision | recall |"
    judge_header = "| probability | hits | right | wrong | precision | recall |"
    g_rules, g_judge, g_off = at(g999["rules"], rules_t), at(g999["judge"], judge_p), at(g999["off"], rules_t)
    summary = "\n".join(
        [
            "| paraphrase_check | setting | QQP held-out precision (95% lower bound) | QQP held-out recall "
            "| QQP right / wrong hits |",
            "| --- | --- | --- | --- | --- |",
            summary_line("rules (default)", at(curves.rules[1], rules_t), f"cosine >= {rules_t:g}"),
            summary_line(
                "judge",
                at(curves.judge[1], judge_p),
                f"cosine >= {JUDGE_SIMILARITY_FLOOR:g}, probability >= {judge_p:g}",
            ),
            summary_line("off", at(curves.cosine[1], rules_t), f"cosine >= {rules_t:g}"),
            "",
            "| paraphrase_check | GPTCache 999: served right | served wrong | missed |",
            "| --- | --- | --- | --- |",
            *(
                f"| {name} | {p.right} ({p.right / 999:.1%}) | {p.wrong} ({p.wrong / 999:.1%}) | "
                f"{999 - p.hits} |"
                for name, p in (("rules", g_rules), ("judge", g_judge), ("off", g_off))
            ),
            "",
            f"On the QQP tuning half, the lowest setting with precision >= {TARGET_PRECISION}: "
            f"{picked_text}. GPTCache's published run at its threshold 0.8: 904 right, 92 wrong.",
        ]
    )
    sample = "all" if not args.pairs else f"a seeded sample (seed {args.seed}) of"
    doc = "\n\n".join(
        [
            "# Semantic cache quality",
            "Generated by `python bench/cache_quality.py --write`; see the script's docstring for "
            "the method. Embedder: the gateway's all-MiniLM-L6-v2 int8 ONNX, on text in the cache's "
            "comparison form (gateway/cache/normalize.py). `rules`: cosine >= threshold and the "
            "questions pass gateway/cache/paraphrase.py (same kind of question, numbers, negation, "
            "people and content words in the same order). `judge`: cosine >= "
            f"{JUDGE_SIMILARITY_FLOOR:g}, same numbers and negations, and gateway/cache/judge.py's "
            "probability >= the setting (fitted on the QQP tuning half). `off`: cosine alone.",
            summary,
            f"## QQP held-out half ({n_held} of {sample} {n} labelled pairs), paraphrase_check: rules\n\n"
            "right = hit on a duplicate pair, wrong = hit on a non-duplicate pair, recall = right / "
            "duplicates. The precision a deployment sees also depends on how many of its near-miss "
            "questions are true paraphrases; QQP's negatives are deliberately similar questions.\n\n"
            + table(curves.rules[1], header, rules_t),
            "## QQP held-out half, paraphrase_check: judge\n\n"
            + table(curves.judge[1], judge_header, judge_p),
            "## QQP held-out half, paraphrase_check: off (cosine alone)\n\n"
            + table(curves.cosine[1], header, rules_t),
            f"## QQP tuning half ({n - n_held} pairs), rules\n\n" + table(curves.rules[0], header, rules_t),
            "## QQP tuning half, judge (fitted here)\n\n" + table(curves.judge[0], judge_header, judge_p),
            "## QQP tuning half, off\n\n" + table(curves.cosine[0], header, rules_t),
            "## GPTCache mock_data.json (999 pairs, every one meant to hit), rules\n\n"
            "All origins cached, each paraphrase looked up; the entry served is right when it is the "
            "pair's own origin. recall = right / 999. ChatGPT's paraphrases reword freely, so most "
            "fail the same-content-words rule. Many of the judge's wrong hits serve another origin "
            "that says nearly the same thing (the file repeats facts in several wordings); they are "
            "counted wrong all the same.\n\n" + table(g999["rules"], header, rules_t),
            "## GPTCache mock_data.json, judge\n\n" + table(g999["judge"], judge_header, judge_p),
            "## GPTCache mock_data.json, off\n\n" + table(g999["off"], header, rules_t),
        ]
    )
    print(doc)
    if args.write:
        RESULTS.write_text(doc + "\n", encoding="utf-8")
        print(f"\nwrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
