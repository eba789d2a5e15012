"""Structure-aware, token-bounded chunking of a parsed Document into retrievable Chunks.

Rules (why: each keeps a chunk self-explanatory to both the retriever and the LLM):
- every chunk starts with its heading breadcrumb line ("Title > Section > Sub") and carries
  it in `section`; a new heading or page always starts a new chunk, so citations are exact;
- prose is packed sentence by sentence up to the budget, with ~overlap tokens of trailing
  sentences repeated at the start of the next chunk of the same section; a sentence is only
  cut when it alone exceeds the budget;
- tables are cut between rows only and each piece repeats the header row (markdown table);
- code stays one fenced block unless it exceeds the budget, then it is cut at definition
  (function/class) boundaries, outermost first; only a piece with no such boundary that is
  still several budgets long is cut at blank lines. A single definition above the budget
  but under that hard cap stays whole and may exceed the budget.
The budget covers the breadcrumb line and markup, so chunk text stays within the embedder's
window (all-MiniLM-L6-v2 reads 256 word pieces).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from .formats.blocks import Code, Document, Heading, Paragraph, Table
from .tokens import TokenCounter, default_counter
from .types import Chunk

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
# A line that starts a definition in common languages (checked after stripping indentation).
_DEF_START = re.compile(
    r"^(?:@[\w.]+"  # decorators / annotations belong to the definition below them
    r"|(?:export\s+)?(?:default\s+)?(?:async\s+)?(?:def|class|function\*?|func|fn|interface|trait|impl"
    r"|struct|enum|module|namespace|macro_rules!|sub|proc|object)\b"
    r"|pub(?:\([\w:]+\))?\s+(?:async\s+|unsafe\s+|const\s+)*(?:fn|struct|enum|trait|mod|type)\b"
    r"|(?:export\s+)?(?:const|let|var)\s+\w+\s*=\s*(?:async\s+)?(?:function\b|\([^)]*\)\s*=>|\w+\s*=>)"
    r"|(?:public|private|protected|internal|static|abstract|final|override|virtual|inline|extern)\b"
    r"|type\s+\w+\s+(?:struct|interface)\b"
    r"|[\w:<>,*&\[\] ]+\s+\**[\w:~]+\s*\([^;]*$"  # C-family function signature (no trailing ';')
    r"|\w+\s*\(\)\s*\{"  # shell function
    r")"
)
_COMMENT = re.compile(r"^\s*(#|//|/\*|\*|--|;|\"\"\"|''')")
_HARD_CAP_FACTOR = 3  # code without definition boundaries is cut at blank lines above this


@dataclass(frozen=True, slots=True)
class ChunkingConfig:
    max_tokens: int = 240  # whole chunk, breadcrumb line included
    overlap_tokens: int = 40  # prose only; tables and code never overlap


@dataclass(slots=True)
class _Unit:
    text: str
    tokens: int
    para: int  # paragraph index: units of different paragraphs re-join with a blank line
    starts_line: bool  # first sentence of a line (list item) inside a multi-line paragraph


class _Chunker:
    def __init__(
        self,
        doc: Document,
        doc_id: str,
        source: str,
        content_hash: str,
        config: ChunkingConfig,
        counter: TokenCounter,
    ) -> None:
        self.doc = doc
        self.doc_id = doc_id
        self.source = source
        self.content_hash = content_hash
        self.cfg = config
        self.counter = counter
        self.chunks: list[Chunk] = []
        self.headings: list[Heading] = []
        self.breadcrumb = ""
        self.budget = config.max_tokens
        self.units: list[_Unit] = []  # pending prose of the current section/page
        self.page: int | None = None
        self.para_index = 0
        self._set_breadcrumb()

    # -- driver ---------------------------------------------------------------------------------
    def run(self) -> list[Chunk]:
        for block in self.doc.blocks:
            if block.page != self.page:
                self._flush_prose()
                self.page = block.page
            if isinstance(block, Heading):
                self._flush_prose()
                while self.headings and self.headings[-1].level >= block.level:
                    self.headings.pop()
                self.headings.append(block)
                self._set_breadcrumb()
            elif isinstance(block, Paragraph):
                self._add_paragraph(block.text)
            elif isinstance(block, Table):
                self._flush_prose()
                self._emit_table(block)
            elif isinstance(block, Code):
                self._flush_prose()
                self._emit_code(block)
        self._flush_prose()
        return self.chunks

    def _set_breadcrumb(self) -> None:
        parts = [h.text for h in self.headings if h.text]
        title = self.doc.title.strip()
        if title and not (parts and parts[0].casefold() == title.casefold()):
            parts.insert(0, title)
        self.breadcrumb = " > ".join(parts)
        overhead = self.counter.count(self.breadcrumb) + 1 if self.breadcrumb else 0
        # A freakishly long breadcrumb must not starve the body of room.
        self.budget = max(self.cfg.max_tokens - overhead, self.cfg.max_tokens // 2)

    def _emit(self, body: str, kind: str, page: int | None) -> None:
        text = f"{self.breadcrumb}\n\n{body}" if self.breadcrumb else body
        ordinal = len(self.chunks)
        self.chunks.append(
            Chunk(
                id=f"{self.doc_id}#{ordinal}",
                doc_id=self.doc_id,
                text=text,
                source=self.source,
                title=self.doc.title,
                section=self.breadcrumb,
                page=page,
                doc_date=self.doc.date or self.doc.version,
                content_hash=self.content_hash,
                kind=kind,
                ordinal=ordinal,
            )
        )

    # -- prose ----------------------------------------------------------------------------------
    def _add_paragraph(self, text: str) -> None:
        self.para_index += 1
        pieces: list[tuple[str, bool]] = []
        for k, line in enumerate(ln for ln in text.split("\n") if ln.strip()):
            indent = line[: len(line) - len(line.lstrip())]  # nested list items keep their depth
            pieces.extend((indent * (j == 0) + s, k > 0 and j == 0) for j, s in enumerate(_sentences(line)))
        counts = self.counter.count_many([p for p, _ in pieces])
        for (piece, starts_line), n in zip(pieces, counts, strict=True):
            if n > self.budget:
                for j, (part, m) in enumerate(self._split_words(piece)):
                    self._push(_Unit(part, m, self.para_index, starts_line and j == 0))
            else:
                self._push(_Unit(piece, n, self.para_index, starts_line))

    def _push(self, unit: _Unit) -> None:
        if self.units and sum(u.tokens for u in self.units) + unit.tokens > self.budget:
            carried = self._overlap(unit.tokens)
            self._emit(_join_units(self.units), "text", self.page)
            self.units = carried
        self.units.append(unit)

    def _overlap(self, incoming: int) -> list[_Unit]:
        """Trailing sentences of the chunk just closed, up to the overlap budget."""
        kept: list[_Unit] = []
        total = 0
        for unit in reversed(self.units):
            if total + unit.tokens > self.cfg.overlap_tokens or total + unit.tokens + incoming > self.budget:
                break
            kept.insert(0, unit)
            total += unit.tokens
        if len(kept) == len(self.units):  # never carry a whole chunk: that would loop forever
            kept = kept[1:]
        return kept

    def _flush_prose(self) -> None:
        if self.units:
            self._emit(_join_units(self.units), "text", self.page)
        self.units = []

    def _split_words(self, sentence: str) -> list[tuple[str, int]]:
        """Last resort for one sentence above the budget: cut between words."""
        words = sentence.split(" ")
        counts = self.counter.count_many(words)
        out: list[tuple[str, int]] = []
        cur: list[str] = []
        cur_n = 0
        for word, n in zip(words, counts, strict=True):
            if cur and cur_n + n > self.budget:
                out.append((" ".join(cur), cur_n))
                cur, cur_n = [], 0
            cur.append(word)
            cur_n += n
        if cur:
            out.append((" ".join(cur), cur_n))
        return out

    # -- tables ---------------------------------------------------------------------------------
    def _emit_table(self, table: Table) -> None:
        width = max([len(table.header)] + [len(r) for r in table.rows])
        if width == 0:
            return
        head = ""
        if table.header:
            cells = _pad(table.header, width)
            head = _md_row(cells) + "\n" + _md_row(["---"] * width)
        rows = [_md_row(_pad(r, width)) for r in table.rows]
        head_tokens = self.counter.count(head) if head else 0
        counts = self.counter.count_many(rows)
        if not rows:
            self._emit(head, "table", table.page)
            return
        cur: list[str] = []
        cur_n = head_tokens
        for row, n in zip(rows, counts, strict=True):
            if cur and cur_n + n > self.budget:
                self._emit("\n".join([head, *cur]) if head else "\n".join(cur), "table", table.page)
                cur, cur_n = [], head_tokens
            cur.append(row)
            cur_n += n
        self._emit("\n".join([head, *cur]) if head else "\n".join(cur), "table", table.page)

    # -- code -----------------------------------------------------------------------------------
    def _emit_code(self, code: Code) -> None:
        lines = code.text.split("\n")
        fence_open = f"```{code.language}"
        budget = self.budget - self.counter.count(fence_open + "\n```")
        counts = self.counter.count_many(lines)
        for start, end in _split_code(lines, counts, 0, len(lines), budget):
            body = "\n".join(lines[start:end]).strip("\n")
            if body.strip():
                self._emit(f"{fence_open}\n{body}\n```", "code", code.page)


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _join_units(units: list[_Unit]) -> str:
    out = units[0].text
    for prev, unit in itertools.pairwise(units):
        sep = "\n\n" if unit.para != prev.para else "\n" if unit.starts_line else " "
        out += sep + unit.text
    return out


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def _pad(cells: list[str], width: int) -> list[str]:
    return cells + [""] * (width - len(cells))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _split_code(
    lines: list[str], counts: list[int], start: int, end: int, budget: int
) -> list[tuple[int, int]]:
    """Line ranges for one code block: whole if it fits, else cut at definitions, outermost first."""
    total = sum(counts[start:end])
    if total <= budget:
        return [(start, end)]
    def_lines = [i for i in range(start + 1, end) if lines[i].strip() and _DEF_START.match(lines[i].lstrip())]
    for indent in sorted({_indent(lines[i]) for i in def_lines}):
        cuts = sorted(
            {_attach_leading_comments(lines, i, start) for i in def_lines if _indent(lines[i]) == indent}
            - {start}
        )
        if not cuts:
            continue
        bounds = [start, *cuts, end]
        pieces: list[tuple[int, int]] = []
        for a, b in itertools.pairwise(bounds):
            pieces.extend(_split_code(lines, counts, a, b, budget))
        return _pack(pieces, counts, budget)
    if total > _HARD_CAP_FACTOR * budget:
        return _pack(_blank_line_pieces(lines, counts, start, end, budget), counts, budget)
    return [(start, end)]


def _attach_leading_comments(lines: list[str], i: int, floor: int) -> int:
    """Move a cut up over the comments/decorators directly above a definition."""
    while (
        i - 1 > floor
        and lines[i - 1].strip()
        and (_COMMENT.match(lines[i - 1]) or lines[i - 1].lstrip().startswith("@"))
    ):
        i -= 1
    return i


def _blank_line_pieces(
    lines: list[str], counts: list[int], start: int, end: int, budget: int
) -> list[tuple[int, int]]:
    """Cut at the last blank line before the budget runs out (or at a line if there is none)."""
    pieces: list[tuple[int, int]] = []
    a, run, last_blank = start, 0, -1
    for i in range(start, end):
        if run + counts[i] > budget and i > a:
            cut = last_blank if last_blank > a else i
            pieces.append((a, cut))
            run, a, last_blank = sum(counts[cut:i]), cut, -1
        if not lines[i].strip():
            last_blank = i
        run += counts[i]
    pieces.append((a, end))
    return pieces


def _pack(pieces: list[tuple[int, int]], counts: list[int], budget: int) -> list[tuple[int, int]]:
    """Merge neighbouring pieces while they fit, so small functions travel together."""
    packed: list[tuple[int, int]] = []
    for a, b in pieces:
        if packed and sum(counts[packed[-1][0] : b]) <= budget:
            packed[-1] = (packed[-1][0], b)
        else:
            packed.append((a, b))
    return packed


def chunk_document(
    doc: Document,
    *,
    doc_id: str,
    source: str | None = None,
    content_hash: str = "",
    config: ChunkingConfig | None = None,
    counter: TokenCounter | None = None,
) -> list[Chunk]:
    """Cut a parsed document into chunks with ids f"{doc_id}#{ordinal}"."""
    return _Chunker(
        doc,
        doc_id,
        source if source is not None else doc_id,
        content_hash,
        config or ChunkingConfig(),
        counter or default_counter(),
    ).run()
