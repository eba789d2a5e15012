"""Golden files: JSONL, one query per line.

    {"id": "q1", "query": "...", "relevant": ["docs/a.md", "docs/b.md"]}
    {"id": "q2", "query": "...", "relevant": [], "answerable": false}

`answerable` defaults to whether `relevant` is non-empty. `id` defaults to the line number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import orjson


class GoldenError(ValueError):
    """A golden file that cannot be used; the message names the line and the problem."""


@dataclass(slots=True)
class GoldenQuery:
    id: str
    query: str
    relevant: list[str] = field(default_factory=list)
    answerable: bool = True

    def to_json(self) -> dict:
        return {"id": self.id, "query": self.query, "relevant": self.relevant, "answerable": self.answerable}


def load_golden(path: Path) -> list[GoldenQuery]:
    queries: list[GoldenQuery] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise GoldenError(f"{path}: cannot read: {exc.strerror}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise GoldenError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(row, dict) or not isinstance(row.get("query"), str) or not row["query"].strip():
            raise GoldenError(f'{where}: each line needs a non-empty "query" string')
        relevant = row.get("relevant", [])
        if not isinstance(relevant, list) or not all(isinstance(r, str) for r in relevant):
            raise GoldenError(f'{where}: "relevant" must be a list of document ids')
        answerable = row.get("answerable", bool(relevant))
        if not isinstance(answerable, bool):
            raise GoldenError(f'{where}: "answerable" must be true or false')
        if answerable and not relevant:
            raise GoldenError(f"{where}: an answerable query needs at least one relevant document id")
        queries.append(GoldenQuery(str(row.get("id", number)), row["query"].strip(), relevant, answerable))
    if not queries:
        raise GoldenError(f"{path}: no queries")
    return queries


def write_golden(path: Path, queries: list[GoldenQuery]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(q.to_json()) + b"\n" for q in queries))
