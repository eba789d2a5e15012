"""Contradiction detection on RGB's counterfactual set (en_fact.json, see ../shared/data/rgb/SOURCE.md).

Each of the 100 questions has `positive` passages (true answer) and `positive_wrong` passages: the
same passages with the answer replaced by a false one. Every passage becomes a chunk of its own
document, and gateway.retrieval.conflicts.find_conflicts runs on small sets like a retriever's
top hits:

- aligned: true passage k + its own counterfactual twin (only the answer differs; easiest);
- cross:   true passage k + counterfactual of another passage j != k (different wording, the
           realistic case: two sources phrase the fact differently);
- top-4:   two true and two counterfactual passages, never a passage with its own twin, plus one
           `negative` passage (related, no answer), in retrieval-like order;
recall = share of questions (with enough passages) where one conflict group holds a true and a
counterfactual chunk; "on answer" = that group's values are the answer and the fake answer.

False positives: every pair of two true passages of the same question (they agree on the answer
and should not conflict), and true + negative pairs (related text about neighbouring facts; some
of these may be real disagreements, so read that rate as an upper bound).

Rerun: . .venv/bin/activate && python bench/conflicts_rgb.py [--data ../shared/data/rgb/en_fact.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.retrieval.conflicts import ConflictGroup, find_conflicts
from gateway.retrieval.types import Chunk

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rgb" / "en_fact.json"


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def chunk(doc_id: str, text: str) -> Chunk:
    return Chunk(id=f"{doc_id}#0", doc_id=doc_id, text=text, source=doc_id, title=doc_id)


def answer_kind(row: dict[str, Any]) -> str:
    answer = row["answer"]
    if isinstance(answer, list):
        return "date"
    return "money" if str(answer).startswith("$") else "entity"


def answer_strings(row: dict[str, Any]) -> list[str]:
    answer = row["answer"]
    if isinstance(answer, list):  # RGB lists the accepted spellings of a date
        return [str(a) for group in answer for a in (group if isinstance(group, list) else [group])]
    return [str(answer)]


def side_has_both(chunks: list[Chunk], groups: list[ConflictGroup]) -> ConflictGroup | None:
    for group in groups:
        docs = {chunks[i].doc_id.split("/")[0] for i in group.members}
        if {"true", "fake"} <= docs:
            return group
    return None


def on_answer(row: dict[str, Any], chunks: list[Chunk], group: ConflictGroup) -> bool:
    """Do the group's values name the true answer on a true chunk and the fake one on a fake chunk?"""
    true_ok = fake_ok = False
    for i, value in group.values.items():
        value_l = value.lower().strip(" .,")
        if chunks[i].doc_id.startswith("true/"):
            true_ok |= any(value_l in a.lower() or a.lower() in value_l for a in answer_strings(row))
        else:
            fake = str(row["fakeanswer"]).lower().strip()
            fake_ok |= value_l in fake or fake in value_l
    return true_ok and fake_ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--show", type=int, default=0, help="print this many misses per scenario")
    args = parser.parse_args()
    rows = load(args.data)

    found: dict[str, Counter[str]] = {s: Counter() for s in ("aligned", "cross", "top-4")}
    total: dict[str, Counter[str]] = {s: Counter() for s in found}
    right: dict[str, int] = Counter()
    misses: dict[str, list[str]] = {s: [] for s in found}
    fp_true = [0, 0]  # flagged, pairs
    fp_neg = [0, 0]
    fp_examples: list[str] = []
    timings: list[float] = []

    def run(chunks: list[Chunk]) -> list[ConflictGroup]:
        t0 = time.perf_counter()
        groups = find_conflicts(chunks)
        timings.append(time.perf_counter() - t0)
        return groups

    for row in rows:
        pos, wrong, neg = row["positive"], row["positive_wrong"], row["negative"]
        kind = answer_kind(row)
        sets: dict[str, list[Chunk]] = {"aligned": [chunk("true/0", pos[0]), chunk("fake/0", wrong[0])]}
        if len(pos) >= 2 and len(wrong) >= 2:
            sets["cross"] = [chunk("true/0", pos[0]), chunk("fake/1", wrong[1])]
        if len(pos) >= 4 and len(wrong) >= 4:
            mixed = [chunk("true/0", pos[0]), chunk("fake/1", wrong[1]), chunk("true/2", pos[2])]
            if neg:
                mixed.append(chunk("neg/0", neg[0]))
            mixed.append(chunk("fake/3", wrong[3]))
            sets["top-4"] = mixed
        for scenario, chunks in sets.items():
            total[scenario][kind] += 1
            group = side_has_both(chunks, run(chunks))
            if group is not None:
                found[scenario][kind] += 1
                right[scenario] += on_answer(row, chunks, group)
            elif len(misses[scenario]) < args.show:
                misses[scenario].append(f"#{row['id']} {row['query']}: {row['answer']} / {row['fakeanswer']}")
        for a, b in itertools.combinations(range(len(pos)), 2):
            fp_true[1] += 1
            groups = run([chunk(f"true/{a}", pos[a]), chunk(f"true/{b}", pos[b])])
            if groups:
                fp_true[0] += 1
                if len(fp_examples) < max(args.show, 3):
                    g = groups[0]
                    fp_examples.append(f"#{row['id']} true/true '{g.subject}': {sorted(g.values.values())}")
        for a, n in itertools.product(range(min(len(pos), 3)), range(min(len(neg), 3))):
            fp_neg[1] += 1
            fp_neg[0] += bool(run([chunk(f"true/{a}", pos[a]), chunk(f"neg/{n}", neg[n])]))

    kinds = ("entity", "date", "money")
    print(f"RGB en_fact: {len(rows)} questions ({args.data})\n")
    print(f"{'scenario':<9} {'recall':>14} {'on answer':>10}  " + "  ".join(f"{k:>12}" for k in kinds))
    for scenario in found:
        n = sum(total[scenario].values())
        k = sum(found[scenario].values())
        per_kind = "  ".join(f"{found[scenario][x]:>4}/{total[scenario][x]:<3} " for x in kinds)
        share, on = k / max(n, 1), right[scenario] / max(k, 1)
        print(f"{scenario:<9} {k:>3}/{n:<3} {share:6.1%} {on:>10.0%}  {per_kind}")
    print()
    print(
        f"false positives, true+true pairs: {fp_true[0]}/{fp_true[1]} = {fp_true[0] / max(fp_true[1], 1):.1%}"
    )
    print(f"flagged, true+negative pairs:     {fp_neg[0]}/{fp_neg[1]} = {fp_neg[0] / max(fp_neg[1], 1):.1%}")
    ms = [t * 1000 for t in timings]
    print(
        f"find_conflicts: median {statistics.median(ms):.2f} ms, max {max(ms):.2f} ms over {len(ms)} calls"
        " (2-5 short passages)"
    )
    for scenario, lines in misses.items():
        for line in lines:
            print(f"miss {scenario}: {line}")
    for line in fp_examples:
        print(f"flagged {line}")


if __name__ == "__main__":
    main()
