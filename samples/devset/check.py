"""Checker for the real-document dev/eval set in samples/devset/.

Run with the project's interpreter (standard library + pypdfium2 only):

    /work/main/.venv/bin/python samples/devset/check.py

It verifies that
  * questions.jsonl parses, every line has the required fields and allowed values;
  * every doc id in "relevant" is a file under corpus/;
  * every answerable question's "answer" occurs verbatim (case-insensitive, whitespace
    collapsed) in the visible text of at least one of its relevant documents;
  * unanswerable questions have relevant == [] and answerable == false;
  * no query is duplicated;
  * every corpus file is listed in SOURCES.md and still has the SHA-256 recorded there
    (the corpus must stay byte-identical to the originals: no linter or formatter may touch it);
  * the per-kind minimum counts are met and every kind has both splits;
and prints the counts per kind and split. Exit status is non-zero on any problem.

`--dump DIR` also writes the extracted text of every corpus file to DIR (for reading).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import html
import html.parser
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
QUESTIONS = HERE / "questions.jsonl"
SOURCES = HERE / "SOURCES.md"

MINIMUMS = {
    "keyword": 25,
    "plain": 40,
    "long": 20,
    "paraphrase": 30,
    "table": 20,
    "code": 15,
    "pdf": 15,
}
MIN_ANSWERABLE = 170
MIN_UNANSWERABLE = 60
MIN_DOCS = 34
SPLITS = ("dev", "test")

_BLOCK_TAGS = {
    "address",
    "article",
    "aside",
    "blockquote",
    "body",
    "br",
    "caption",
    "dd",
    "div",
    "dl",
    "dt",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "head",
    "header",
    "hr",
    "html",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "title",
    "tr",
    "ul",
}
_INVISIBLE_TAGS = {"script", "style", "template", "noscript"}


class _VisibleText(html.parser.HTMLParser):
    """Text a browser would show: no tags, no script/style, entities decoded,
    block elements separated by whitespace, inline elements joined as they are."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _INVISIBLE_TAGS:
            self._hidden += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _INVISIBLE_TAGS:
            self._hidden = max(0, self._hidden - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def html_text(data: bytes) -> str:
    parser = _VisibleText()
    parser.feed(data.decode("utf-8", errors="replace"))
    parser.close()
    return html.unescape("".join(parser.parts))


def pdf_text(path: Path) -> str:
    import pypdfium2 as pdfium  # only dependency outside the standard library

    doc = pdfium.PdfDocument(str(path))
    try:
        return "\n".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))
    finally:
        doc.close()


def document_text(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return pdf_text(path)
    data = path.read_bytes()
    if suffix in (".html", ".htm", ".xhtml"):
        return html_text(data)
    return data.decode("utf-8", errors="replace")


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def corpus_files() -> list[str]:
    return sorted(p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*") if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", type=Path, help="write the extracted text of each document here")
    args = ap.parse_args()

    problems: list[str] = []
    docs = corpus_files()
    if len(docs) < MIN_DOCS:
        problems.append(f"corpus has {len(docs)} documents, want at least {MIN_DOCS}")

    texts: dict[str, str] = {}
    for doc in docs:
        try:
            texts[doc] = normalise(document_text(CORPUS / doc))
        except Exception as exc:  # a document we cannot read is a problem, not a crash
            problems.append(f"{doc}: cannot extract text: {exc!r}")
            texts[doc] = ""
        if args.dump:
            out = args.dump / (doc + ".txt")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(document_text(CORPUS / doc), encoding="utf-8")

    sources = SOURCES.read_text(encoding="utf-8") if SOURCES.exists() else ""
    if not sources:
        problems.append("SOURCES.md is missing or empty")
    # Rows look like: | `readme/x.md` | `/usr/share/doc/...` | ... | `0123456789abcdef` |
    recorded = {}
    for line in sources.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`") and re.fullmatch(r"`[0-9a-f]{16}`", cells[-1]):
            recorded[cells[0].strip("`")] = cells[-1].strip("`")
    for doc in docs:
        if doc not in recorded:
            problems.append(f"{doc}: no row in SOURCES.md (as `{doc}` ... `sha256-prefix`)")
        elif hashlib.sha256((CORPUS / doc).read_bytes()).hexdigest()[:16] != recorded[doc]:
            problems.append(f"{doc}: bytes differ from the SHA-256 in SOURCES.md (file was modified)")
    for doc in sorted(set(recorded) - set(docs)):
        problems.append(f"SOURCES.md lists {doc}, which is not in corpus/")

    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    seen_queries: dict[str, int] = {}
    cited: set[str] = set()
    n_answerable = n_unanswerable = 0
    lines = QUESTIONS.read_text(encoding="utf-8").splitlines() if QUESTIONS.exists() else []
    if not lines:
        problems.append("questions.jsonl is missing or empty")
    for lineno, line in enumerate(lines, 1):
        where = f"questions.jsonl:{lineno}"
        if not line.strip():
            problems.append(f"{where}: blank line")
            continue
        try:
            q = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not JSON: {exc}")
            continue
        query = q.get("query")
        kind = q.get("kind")
        split = q.get("split")
        relevant = q.get("relevant")
        if not isinstance(query, str) or not query.strip():
            problems.append(f"{where}: missing query")
            continue
        key = normalise(query)
        if key in seen_queries:
            problems.append(f"{where}: duplicate of line {seen_queries[key]}: {query!r}")
        seen_queries[key] = lineno
        if split not in SPLITS:
            problems.append(f"{where}: split must be one of {SPLITS}, got {split!r}")
        if not isinstance(relevant, list) or not all(isinstance(r, str) for r in relevant):
            problems.append(f"{where}: relevant must be a list of doc ids")
            continue
        counts[(kind, split)] += 1

        if q.get("answerable", True) is False:
            n_unanswerable += 1
            if kind != "unanswerable":
                problems.append(f"{where}: unanswerable question must have kind 'unanswerable'")
            if relevant:
                problems.append(f"{where}: unanswerable question must have relevant == []")
            if "answer" in q:
                problems.append(f"{where}: unanswerable question must not carry an answer")
            continue

        n_answerable += 1
        if kind not in MINIMUMS:
            problems.append(f"{where}: unknown kind {kind!r}")
        if "answerable" in q and q["answerable"] is not True:
            problems.append(f"{where}: answerable must be true or absent")
        answer = q.get("answer")
        if not isinstance(answer, str) or not answer.strip():
            problems.append(f"{where}: answerable question needs a non-empty answer")
            continue
        if not relevant:
            problems.append(f"{where}: answerable question needs at least one relevant doc")
            continue
        missing = [r for r in relevant if r not in texts]
        if missing:
            problems.append(f"{where}: unknown doc id(s) {missing}")
            continue
        cited.update(relevant)
        needle = normalise(answer)
        if not any(needle in texts[r] for r in relevant):
            problems.append(f"{where}: answer {answer!r} not found in {relevant}")

    # Report.
    kinds = [*MINIMUMS, "unanswerable"]
    print(f"documents: {len(docs)} ({len(cited)} cited by at least one question)")
    by_folder = collections.Counter(d.split("/", 1)[0] for d in docs)
    print("  by folder: " + ", ".join(f"{k} {v}" for k, v in sorted(by_folder.items())))
    print(f"{'kind':<14}{'dev':>6}{'test':>6}{'total':>7}")
    for kind in kinds:
        dev, test = counts[(kind, "dev")], counts[(kind, "test")]
        print(f"{kind:<14}{dev:>6}{test:>6}{dev + test:>7}")
        need = MINIMUMS.get(kind, MIN_UNANSWERABLE)
        if dev + test < need:
            problems.append(f"kind {kind!r}: {dev + test} questions, want at least {need}")
        if dev == 0 or test == 0:
            problems.append(f"kind {kind!r}: needs questions in both splits")
    extra = {k for k, _ in counts} - set(kinds)
    for kind in sorted(map(str, extra)):
        problems.append(f"unexpected kind {kind!r}")
    tot_dev = sum(v for (k, s), v in counts.items() if s == "dev")
    tot_test = sum(v for (k, s), v in counts.items() if s == "test")
    print(f"{'all':<14}{tot_dev:>6}{tot_test:>6}{tot_dev + tot_test:>7}")
    print(f"answerable: {n_answerable}, unanswerable: {n_unanswerable}")
    if n_answerable < MIN_ANSWERABLE:
        problems.append(f"{n_answerable} answerable questions, want at least {MIN_ANSWERABLE}")
    if n_unanswerable < MIN_UNANSWERABLE:
        problems.append(f"{n_unanswerable} unanswerable questions, want at least {MIN_UNANSWERABLE}")

    if problems:
        print(f"\n{len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
