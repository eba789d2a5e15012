"""Parsing: every supported format end to end (bytes -> ParsedFile with chunks), and
bad input turning into skipped/error outcomes instead of exceptions."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path

import pytest

from gateway.retrieval.parsing import parse_bytes, parse_file
from gateway.retrieval.types import ParsedFile

FIXTURES = Path(__file__).parent / "fixtures" / "ingest"
SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def _text(result: ParsedFile) -> str:
    return "\n".join(c.text for c in result.chunks)


def test_markdown_front_matter_headings_code_and_table() -> None:
    md = b"""---
title: Widget Guide
date: 2024-03-01
version: "2.1"
---
# Widget Guide

## Install

### Linux

Run the installer. It needs **root**.

```bash
sudo ./install.sh --prefix /opt/widget
```

| Plan | Seats |
|------|-------|
| Free | 1 |
"""
    r = parse_bytes("docs/guide.md", md)
    assert r.outcome == "ok", r.reason
    assert (r.title, r.doc_date) == ("Widget Guide", "2024-03-01")
    assert r.content_hash == "sha256:" + hashlib.sha256(md).hexdigest()
    kinds = [c.kind for c in r.chunks]
    assert kinds == ["text", "code", "table"]
    prose, code, table = r.chunks
    assert prose.section == "Widget Guide > Install > Linux"
    assert prose.text.startswith("Widget Guide > Install > Linux\n\n")
    assert "It needs root." in prose.text  # emphasis markers dropped
    assert "```bash\nsudo ./install.sh --prefix /opt/widget\n```" in code.text
    assert "| Plan | Seats |\n| --- | --- |\n| Free | 1 |" in table.text
    assert [c.id for c in r.chunks] == ["docs/guide.md#0", "docs/guide.md#1", "docs/guide.md#2"]
    assert all(c.doc_id == c.source == "docs/guide.md" and c.doc_date == "2024-03-01" for c in r.chunks)


def test_markdown_version_without_date_is_the_document_date() -> None:
    r = parse_bytes("a.md", b"---\nversion: 3.2\n---\nBody text.\n")
    assert r.doc_date == "3.2"


def test_plain_text_headings_and_no_date_from_the_file_time(tmp_path: Path) -> None:
    p = tmp_path / "notes" / "faq.txt"
    p.parent.mkdir()
    p.write_text(
        "Support FAQ\n===========\n\nHow to reset\n------------\n\nPress the button\nfor ten seconds.\n"
    )
    stamp = dt.datetime(2020, 2, 3, 12, tzinfo=dt.UTC).timestamp()
    os.utime(p, (stamp, stamp))
    r = parse_file(p, root=tmp_path)
    assert r.outcome == "ok"
    assert r.path == r.chunks[0].doc_id == "notes/faq.txt"
    # The file's modification time says when it was copied, not when it was written.
    assert r.doc_date is None and r.chunks[0].doc_date is None
    assert r.chunks[0].section == "Support FAQ > How to reset"
    assert r.chunks[0].text.endswith("Press the button for ten seconds.")


def test_html_drops_chrome_and_keeps_structure() -> None:
    html = b"""<html><head><title>Help</title><script>var secret = 1;</script>
<style>.x{color:red}</style><meta name="date" content="2023-07-08"></head><body>
<nav><a href="/">Home</a> | <a href="/login">Login</a></nav>
<h1>Setup</h1><p>Plug the device
in.<br>Then wait.</p>
<table><tr><th>Port</th><th>Use</th></tr><tr><td>80</td><td>web</td></tr></table>
<pre><code class="language-js">console.log("hi");</code></pre>
<footer>Copyright</footer></body></html>"""
    r = parse_bytes("help.html", html)
    assert r.outcome == "ok", r.reason
    text = _text(r)
    for gone in ("secret", "color:red", "Login", "Copyright"):
        assert gone not in text
    assert r.doc_date == "2023-07-08"
    assert "Plug the device in.\nThen wait." in text
    assert "| Port | Use |\n| --- | --- |\n| 80 | web |" in text
    assert '```js\nconsole.log("hi");\n```' in text
    assert all(c.section == "Help > Setup" for c in r.chunks)


def test_pdf_text_layer_metadata_headings_and_pages() -> None:
    r = parse_file(FIXTURES / "manual.pdf")
    assert r.outcome == "ok", r.reason
    assert (r.title, r.doc_date) == ("Fixture Manual", "2023-05-06")
    by_page = {c.page: c for c in r.chunks}
    assert set(by_page) == {1, 2}
    assert by_page[1].section == "Fixture Manual > Pumps"
    assert "40 litres per minute" in by_page[1].text
    assert by_page[2].section == "Fixture Manual > Valves"
    assert "closes automatically above 6 bar" in by_page[2].text
    assert not any(c.text.rstrip().endswith("\n1") for c in r.chunks)  # page-number lines dropped


def test_scanned_pdf_is_ocrd() -> None:
    r = parse_file(FIXTURES / "scanned.pdf")
    assert r.outcome == "ok", r.reason
    text = _text(r).lower()
    assert "invoice total" in text and "420" in text and "15 days" in text
    assert r.chunks[0].page == 1
    assert r.doc_date == "2022-11-30"


def test_png_is_ocrd() -> None:
    r = parse_bytes("scan/note.png", (FIXTURES / "note.png").read_bytes())
    assert r.outcome == "ok", r.reason
    text = _text(r).lower()
    assert "refund window" in text and "30 days" in text and "pro plan" in text


def test_csv_is_a_table_with_header() -> None:
    rows = "".join(f"p{i},{i * 10},note {i}\n" for i in range(200))
    r = parse_bytes("limits.csv", ("plan,limit,comment\n" + rows).encode())
    assert r.outcome == "ok"
    assert len(r.chunks) > 1
    for c in r.chunks:
        assert c.kind == "table"
        assert "| plan | limit | comment |\n| --- | --- | --- |\n" in c.text
    assert "| p199 | 1990 | note 199 |" in r.chunks[-1].text


def test_semicolon_csv_is_sniffed() -> None:
    r = parse_bytes("eu.csv", "name;price\nKäse;3,50\n".encode("cp1252"))
    assert "| Käse | 3,50 |" in r.chunks[0].text


def test_xlsx_sheets_become_tables_under_sheet_headings() -> None:
    r = parse_file(FIXTURES / "stock.xlsx")
    assert r.outcome == "ok", r.reason
    stock, suppliers = r.chunks
    assert stock.section == "stock.xlsx > Stock"
    assert "| bolts | 120 | 2024-01-02 |" in stock.text
    assert "| nuts | 75 | 2024-01-03 |" in stock.text  # 75.0 shown as a whole number
    assert suppliers.section == "stock.xlsx > Suppliers"
    assert "| Acme Fasteners | Belgium |" in suppliers.text


def test_docx_headings_paragraphs_tables_and_core_date() -> None:
    r = parse_file(FIXTURES / "travel.docx")
    assert r.outcome == "ok", r.reason
    assert (r.title, r.doc_date) == ("Travel Rules", "2021-09-14")
    sections = [(c.section, c.kind) for c in r.chunks]
    assert sections == [
        ("Travel Rules > Booking", "text"),
        ("Travel Rules > Booking > Hotels", "text"),
        ("Travel Rules > Booking > Hotels", "table"),
    ]
    assert "| City | Cap |\n| --- | --- |\n| Paris | 180 |\n| Lyon | 120 |" in r.chunks[2].text


def test_source_code_is_fenced_with_language() -> None:
    r = parse_bytes("src/app.go", b'package main\n\nfunc main() {\n\tprintln("hi")\n}\n')
    assert r.outcome == "ok"
    (chunk,) = r.chunks
    assert chunk.kind == "code"
    assert chunk.text == 'app.go\n\n```go\npackage main\n\nfunc main() {\n\tprintln("hi")\n}\n```'


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.md", b"", "empty file"),
        ("blank.txt", b"  \n\n ", "empty file"),
        ("bin.txt", b"abc\x00\x01\x02", "binary content"),
        ("junk.docx", b"PK\x03\x04 not really a zip", "corrupt DOCX"),
        ("junk.xlsx", os.urandom(64), "corrupt workbook"),
        ("junk.png", b"\x89PNG\r\n\x1a\n broken", "unreadable image"),
        ("nothing.html", b"<html><script>x()</script></html>", "no extractable text"),
    ],
)
def test_bad_input_is_an_error_outcome(name: str, data: bytes, reason: str) -> None:
    r = parse_bytes(name, data)
    assert r.outcome == "error"
    assert reason in r.reason
    assert r.chunks == []


@pytest.mark.parametrize(
    ("fixture", "reason"),
    [("truncated.pdf", "corrupt PDF"), ("encrypted.pdf", "encrypted PDF"), ("protected.docx", "encrypted")],
)
def test_corrupt_and_encrypted_files_are_errors(fixture: str, reason: str) -> None:
    r = parse_file(FIXTURES / fixture)
    assert (r.outcome, r.chunks) == ("error", [])
    assert reason in r.reason


@pytest.mark.parametrize("ext", [".md", ".txt", ".html", ".pdf", ".csv", ".xlsx", ".docx", ".py", ".json"])
def test_random_bytes_never_raise(ext: str) -> None:
    r = parse_bytes("x" + ext, os.urandom(2048))
    assert r.outcome in ("ok", "error")


def test_unsupported_type_is_skipped(tmp_path: Path) -> None:
    p = tmp_path / "movie.mp4"
    p.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    assert (parse_file(p).outcome, parse_file(p).reason) == ("skipped", "unsupported file type: movie.mp4")
    assert parse_bytes("archive.7z", b"7z").outcome == "skipped"


def test_size_limit_skips_before_reading(tmp_path: Path) -> None:
    p = tmp_path / "big.txt"
    p.write_text("word " * 1000)
    r = parse_file(p, max_bytes=100)
    assert r.outcome == "skipped" and "too large" in r.reason
    assert parse_bytes("big.txt", b"x" * 101, max_bytes=100).outcome == "skipped"


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    r = parse_file(tmp_path / "gone.md", root=tmp_path)
    assert (r.outcome, r.path) == ("error", "gone.md")


def test_sample_corpus_parses_and_golden_set_points_at_it() -> None:
    root = SAMPLES / "corpus"
    doc_ids = set()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.parent.name != "legal":  # the scanned page is covered by the OCR tests
            r = parse_file(p, root=root)
            assert r.outcome == "ok", (p, r.reason)
            doc_ids.add(r.path)
    doc_ids.add("legal/signed-sla-amendment-3.pdf")
    assert (root / "legal" / "signed-sla-amendment-3.pdf").is_file()
    golden = [json.loads(line) for line in (SAMPLES / "golden.jsonl").read_text().splitlines() if line]
    assert len(golden) >= 30
    for item in golden:
        assert set(item["relevant"]) <= doc_ids, item
        assert bool(item["relevant"]) == item.get("answerable", True)
