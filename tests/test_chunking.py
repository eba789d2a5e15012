"""Chunking rules on hand-built documents: budgets, overlap, breadcrumbs, tables, code, pages."""

from __future__ import annotations

import itertools
import re

from gateway.retrieval.chunking import ChunkingConfig, chunk_document
from gateway.retrieval.formats.blocks import Code, Document, Heading, Paragraph, Table
from gateway.retrieval.tokens import ApproxCounter, count_tokens

SENTENCES = [
    f"Sentence number {i} explains one more detail about the pump and its filter." for i in range(60)
]


def _body(text: str) -> str:
    return text.split("\n\n", 1)[1]


def test_prose_respects_budget_overlaps_and_ends_on_sentences() -> None:
    doc = Document(
        title="Manual", blocks=[Heading(1, "Pumps"), Heading(2, "Care"), Paragraph(" ".join(SENTENCES))]
    )
    chunks = chunk_document(doc, doc_id="m.md", config=ChunkingConfig(max_tokens=120, overlap_tokens=30))
    assert len(chunks) > 3
    for i, c in enumerate(chunks):
        assert c.id == f"m.md#{i}" and c.ordinal == i
        assert c.section == "Manual > Pumps > Care"
        assert c.text.startswith("Manual > Pumps > Care\n\n")
        assert count_tokens(c.text) <= 120
        assert _body(c.text).endswith(".")  # never cut mid-sentence
    for prev, nxt in itertools.pairwise(chunks):
        last = re.findall(r"Sentence number \d+ ", prev.text)[-1]
        assert last in nxt.text  # the next chunk repeats the tail of the previous one
    joined = " ".join(_body(c.text) for c in chunks)
    assert all(s in joined for s in SENTENCES)


def test_title_equal_to_first_heading_is_not_repeated() -> None:
    doc = Document(
        title="Guide",
        blocks=[
            Heading(1, "Guide"),
            Heading(2, "Install"),
            Heading(3, "Linux"),
            Paragraph("Run it."),
            Heading(2, "Usage"),
            Paragraph("Use it."),
        ],
    )
    chunks = chunk_document(doc, doc_id="g")
    assert [c.section for c in chunks] == ["Guide > Install > Linux", "Guide > Usage"]


def test_table_chunks_repeat_header_and_never_split_rows() -> None:
    rows = [
        [f"plan-{i}", str(i * 7), "a fairly long description of what the plan includes"] for i in range(80)
    ]
    doc = Document(title="Pricing", blocks=[Table(header=["Plan", "Price", "Notes"], rows=rows)])
    chunks = chunk_document(doc, doc_id="p.csv", config=ChunkingConfig(max_tokens=150))
    assert len(chunks) > 3
    seen: list[str] = []
    for c in chunks:
        assert c.kind == "table"
        lines = _body(c.text).split("\n")
        assert lines[:2] == ["| Plan | Price | Notes |", "| --- | --- | --- |"]
        assert all(line.startswith("| plan-") and line.endswith(" |") for line in lines[2:])
        assert count_tokens(c.text) <= 150
        seen.extend(lines[2:])
    assert seen == [
        f"| plan-{i} | {i * 7} | a fairly long description of what the plan includes |" for i in range(80)
    ]


def test_ragged_table_rows_are_padded_and_pipes_escaped() -> None:
    doc = Document(blocks=[Table(header=["a", "b"], rows=[["x|y"], ["1", "2", "3"]])])
    (chunk,) = chunk_document(doc, doc_id="t")
    assert chunk.text == "| a | b |  |\n| --- | --- | --- |\n| x\\|y |  |  |\n| 1 | 2 | 3 |"


def test_small_code_block_stays_whole_even_when_prose_is_split() -> None:
    code = "def f(x):\n    y = x + 1\n\n    return y * 2"
    doc = Document(
        title="T", blocks=[Paragraph(" ".join(SENTENCES[:20])), Code(code, "python"), Paragraph("After.")]
    )
    chunks = chunk_document(doc, doc_id="t", config=ChunkingConfig(max_tokens=100))
    code_chunks = [c for c in chunks if c.kind == "code"]
    assert len(code_chunks) == 1
    assert _body(code_chunks[0].text) == f"```python\n{code}\n```"


def _big_python() -> str:
    parts = ['"""Module doc."""\n\nimport os\n']
    for i in range(12):
        parts.append(
            f"# helper {i}\n@cache\ndef helper_{i}(value: int) -> int:\n"
            f"    total = value * {i} + os.getpid()\n    if total > 100:\n"
            f"        return total - {i}\n    return total + {i}\n"
        )
    parts.append(
        "class Store:\n    def get(self, key):\n        return self.data[key]\n\n"
        "    def put(self, key, value):\n        self.data[key] = value\n"
    )
    return "\n\n".join(parts)


def test_large_code_is_split_only_at_definitions() -> None:
    source = _big_python()
    doc = Document(title="mod.py", blocks=[Code(source, "python")])
    chunks = chunk_document(doc, doc_id="mod.py", config=ChunkingConfig(max_tokens=120))
    assert len(chunks) > 2
    pieces = []
    for c in chunks:
        body = _body(c.text)
        assert body.startswith("```python\n") and body.endswith("\n```")
        inner = body[len("```python\n") : -len("\n```")]
        first = inner.split("\n", 1)[0]
        assert first.startswith(('"""', "# helper", "@cache", "def ", "class ")), first
        assert count_tokens(c.text) <= 120
        pieces.append(inner)
    # Nothing lost or duplicated: the pieces re-assemble the file (blank lines between cuts aside).
    assert re.sub(r"\n+", "\n", "\n".join(pieces)) == re.sub(r"\n+", "\n", source).strip()


def test_one_oversized_definition_stays_whole() -> None:
    body = "\n".join(f"    x{i} = compute({i}, 'value')" for i in range(30))
    source = f"def huge():\n{body}\n    return x0"
    chunks = chunk_document(
        Document(blocks=[Code(source, "python")]), doc_id="h.py", config=ChunkingConfig(max_tokens=200)
    )
    assert len(chunks) == 1  # ~350 tokens: over budget but under the 3x hard cap


def test_new_page_starts_new_chunk_and_keeps_page_numbers() -> None:
    doc = Document(
        title="Scan",
        blocks=[
            Paragraph("Page one text.", page=1),
            Paragraph("More on one.", page=1),
            Paragraph("Page two text.", page=2),
        ],
    )
    chunks = chunk_document(doc, doc_id="s.pdf")
    assert [(c.page, _body(c.text)) for c in chunks] == [
        (1, "Page one text.\n\nMore on one."),
        (2, "Page two text."),
    ]


def test_overlong_sentence_is_cut_between_words() -> None:
    sentence = " ".join(["word"] * 500) + "."
    chunks = chunk_document(
        Document(blocks=[Paragraph(sentence)]),
        doc_id="w",
        config=ChunkingConfig(max_tokens=100, overlap_tokens=0),
    )
    assert len(chunks) >= 5
    assert all(count_tokens(c.text) <= 100 for c in chunks)
    assert sum(c.text.count("word") for c in chunks) == 500


def test_list_items_keep_their_lines() -> None:
    doc = Document(title="L", blocks=[Paragraph("- first item. It has two sentences.\n  - nested\n- second")])
    (chunk,) = chunk_document(doc, doc_id="l")
    assert _body(chunk.text) == "- first item. It has two sentences.\n  - nested\n- second"


def test_metadata_is_copied_onto_chunks_and_approx_counter_works() -> None:
    doc = Document(title="Doc", version="1.4", blocks=[Paragraph(" ".join(SENTENCES[:30]))])
    chunks = chunk_document(
        doc,
        doc_id="d",
        source="https://x/d",
        content_hash="sha256:ab",
        config=ChunkingConfig(max_tokens=100),
        counter=ApproxCounter(),
    )
    assert len(chunks) > 1
    for c in chunks:
        assert (c.source, c.title, c.doc_date, c.content_hash) == ("https://x/d", "Doc", "1.4", "sha256:ab")
        assert ApproxCounter().count(c.text) <= 100
