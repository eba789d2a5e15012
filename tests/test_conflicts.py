"""Contradiction detection: real sample policies, near misses that must not conflict, RGB items."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from gateway.retrieval.conflicts import ConflictGroup, extract_values, find_conflicts, newest
from gateway.retrieval.parsing import parse_file
from gateway.retrieval.types import Chunk

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "samples" / "corpus"
RGB = ROOT.parent / "shared" / "data" / "rgb" / "en_fact.json"


def chunk(doc_id: str, text: str, doc_date: str | None = None, kind: str = "text") -> Chunk:
    return Chunk(id=f"{doc_id}#0", doc_id=doc_id, text=text, source=doc_id, title=doc_id, doc_date=doc_date,
                 kind=kind)  # fmt: skip


def refund_chunks() -> list[Chunk]:
    chunks: list[Chunk] = []
    for name in ("refund-policy-2022.md", "refund-policy-2024.md"):
        parsed = parse_file(CORPUS / "policies" / name, root=CORPUS)
        assert parsed.outcome == "ok", parsed.reason
        chunks.extend(parsed.chunks)
    return chunks


def test_refund_policies_conflict_on_the_annual_refund_window() -> None:
    chunks = refund_chunks()
    groups = find_conflicts(chunks)
    window = [g for g in groups if sorted(g.values.values()) == ["14 days", "30 days"]]
    assert len(window) == 1, groups
    group = window[0]
    assert {chunks[i].doc_id for i in group.members} == {
        "policies/refund-policy-2022.md",
        "policies/refund-policy-2024.md",
    }
    assert all(chunks[i].section.endswith("Annual plans") for i in group.members)
    assert "purchase" in group.subject
    # The monthly-renewal "7 days" is a different rule and must not join the annual group.
    assert all("7 days" not in g.values.values() for g in groups)


def test_newest_prefers_the_2024_policy() -> None:
    chunks = refund_chunks()
    for group in find_conflicts(chunks):
        assert chunks[newest(chunks, group)].doc_date == "2024-06-01"


def test_same_value_written_differently_is_not_a_conflict() -> None:
    refund = "Refunds are possible within {} of purchase."
    price = "The Team plan costs {} per year."
    effective = "The policy took effect on {}."
    cases = [
        (refund, "30 days", "thirty days"),
        (refund, "14 days", "2 weeks"),
        (refund, "30 days", "one month"),
        (price, "$1,200", "$1.2k"),
        (effective, "June 1, 2024", "2024-06-01"),
        (effective, "1 June 2024", "June 2024"),  # less precise, not different
    ]
    for template, x, y in cases:
        a, b = template.format(x), template.format(y)
        assert find_conflicts([chunk("a", a), chunk("b", b)]) == [], (a, b)
    # The control: the same templates with really different values do conflict.
    for template, x, y in [(refund, "30 days", "3 weeks"), (price, "$1,200", "$1,500")]:
        assert len(find_conflicts([chunk("a", template.format(x)), chunk("b", template.format(y))])) == 1


def test_figures_about_different_subjects_are_not_a_conflict() -> None:
    pairs = [
        ("The Team plan costs $49 per month.", "The Business plan costs $99 per month."),
        (
            "Annual plans can be refunded if you ask within 14 days of purchase.",
            "Monthly plans can be refunded if you ask within 7 days of purchase.",
        ),
        ("Uploads are limited to 100 MB per file.", "Workspaces are limited to 50 members per plan."),
        ("Support answers within 2 business days.", "Invoices are due within 30 days of the invoice date."),
    ]
    for a, b in pairs:
        assert find_conflicts([chunk("a", a), chunk("b", b)]) == [], (a, b)
    # The controls: the same sentence about the same subject with another figure does conflict.
    for a, _ in pairs[:2]:
        other = a.replace("$49", "$59").replace("14 days", "21 days")
        assert len(find_conflicts([chunk("a", a), chunk("b", other)])) == 1, (a, other)


def test_short_sentences_conflict_only_when_nothing_else_differs() -> None:
    a = chunk("a", "Support replies within 4 hours.")
    b = chunk("b", "Support replies within 24 hours.")
    assert len(find_conflicts([a, b])) == 1
    a = chunk("a", "The game was released on September 14, 2018.")
    b = chunk("b", "The game was released on December 1, 2017 in Japan, North America and Europe.")
    assert find_conflicts([a, b]) == []  # "the game" may be two different games


def test_chunks_of_one_document_never_conflict() -> None:
    a = chunk("policy.md", "Annual plans can be refunded if you ask within 14 days of purchase.")
    b = chunk("policy.md", "Annual plans can be refunded if you ask within 30 days of purchase.")
    b.id = "policy.md#1"
    assert find_conflicts([a, b]) == []


def test_three_sources_form_one_group_and_code_is_ignored() -> None:
    text = "Annual plans can be refunded if you ask within {} of purchase."
    chunks = [
        chunk("old.md", text.format("14 days"), "2022-02-01"),
        chunk("new.md", text.format("30 days"), "2024-06-01"),
        chunk("faq.md", text.format("one month"), None),
        chunk("snippet.py", "# refund if you ask within 7 days of purchase\nDAYS = 7", kind="code"),
    ]
    groups = find_conflicts(chunks)
    assert groups == [
        ConflictGroup(
            members=[0, 1, 2],
            subject=groups[0].subject,
            values={0: "14 days", 1: "30 days", 2: "one month"},
        )
    ]
    assert newest(chunks, groups[0]) == 1


def test_newest_compares_versions_numerically_and_prefers_dates() -> None:
    text = "Exports are kept for {} days after the workspace is deleted."
    chunks = [chunk("v1.9", text.format(30), "1.9"), chunk("v1.10", text.format(60), "1.10")]
    (group,) = find_conflicts(chunks)
    assert newest(chunks, group) == 1  # 1.10 is newer than 1.9, not older as strings would say
    group = ConflictGroup(members=[0, 1], subject="", values={})
    dated = [chunk("x", "", "9.0"), chunk("y", "", "2021-03-04")]
    assert newest(dated, group) == 1
    undated = [chunk("x", ""), chunk("y", "")]
    assert newest(undated, group) == 0  # nothing to go on: keep the better-ranked one


def test_values_are_typed_and_normalised() -> None:
    values = extract_values("Apple paid $1.39 billion on Feb. 7, 2021, or 20% more, within thirty days.")
    assert [(v.kind, v.norm) for v in values] == [
        ("entity", ("apple",)),
        ("money", ("USD", 1.39e9)),
        ("date", (2021, 2, 7)),
        ("percent", (20.0,)),
        ("qty", ("duration", 30.0, "day")),
    ]


def test_names_swapped_in_the_same_slot_conflict() -> None:
    sentence = "The game was played at Raymond James Stadium in {}, the home of the Buccaneers."
    a = chunk("a", sentence.format("Tampa, Florida"))
    b = chunk("b", sentence.format("Glendale, Arizona"))
    (group,) = find_conflicts([a, b])
    assert group.values == {0: "Tampa, Florida", 1: "Glendale, Arizona"}


def _rgb_rows() -> list[dict[str, object]]:
    if not RGB.exists():
        pytest.skip(f"RGB data not found at {RGB} (../shared/data is not part of this repository)")
    return [json.loads(line) for line in RGB.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_rgb_true_and_counterfactual_passages_conflict() -> None:
    rows = {row["id"]: row for row in _rgb_rows()}
    # A place, a money figure, a date and a person: one of each kind the set swaps.
    for item in (0, 12, 33, 4):
        row = rows[item]
        true_text, fake_text = row["positive"][0], row["positive_wrong"][0]  # type: ignore[index]
        groups = find_conflicts([chunk("true", str(true_text)), chunk("fake", str(fake_text))])
        assert groups and groups[0].members == [0, 1], (item, true_text, fake_text)


def test_rgb_true_passages_do_not_conflict() -> None:
    for row in _rgb_rows()[:30]:
        positive = [str(p) for p in row["positive"]]  # type: ignore[attr-defined]
        for a, b in itertools.pairwise(positive):
            assert find_conflicts([chunk("a", a), chunk("b", b)]) == [], (row["id"], a, b)
