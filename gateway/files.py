"""Tenants' uploaded files (OpenAI's Files API), kept under the gateway's data folder.

Each tenant has a folder `<files.dir>/<tenant>/` holding `<file id>` (the bytes, as uploaded) and
`<file id>.json` (what the API returns about it). The metadata is written after the bytes, each
through a temporary name and a rename, so a listed file always has its content and a crash leaves
at most an orphan temporary file. A file past its `expires_at` is treated as gone and removed when
next seen. Blocking file I/O: the API calls these from a worker thread.

With several replicas, `files.dir` must be a folder they share (a volume): a file uploaded through
one replica is then read through any.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import orjson

ID_PREFIX = "file-"
Order = Literal["asc", "desc"]


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    expires_at: int | None = None
    created_ns: int = 0  # orders files made within one second (created_at has seconds only)

    def to_openai(self) -> dict[str, object]:
        """OpenAI's file object."""
        body: dict[str, object] = {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",  # deprecated by OpenAI, still required by its schema
        }
        if self.expires_at is not None:
            body["expires_at"] = self.expires_at
        return body


def new_id(prefix: str) -> str:
    """An id of this gateway's own: the prefix and 24 hex digits (`file-...`, `vs_...`)."""
    return prefix + secrets.token_hex(12)


def is_own_id(value: str, prefix: str) -> bool:
    """Only ids made by new_id: nothing in a path can reach outside the tenant's folder."""
    rest = value.removeprefix(prefix)
    return value.startswith(prefix) and len(rest) == 24 and all(c in "0123456789abcdef" for c in rest)


def new_file_id() -> str:
    return new_id(ID_PREFIX)


def valid_file_id(file_id: str) -> bool:
    return is_own_id(file_id, ID_PREFIX)


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _folder(self, tenant: str) -> Path:
        return self.root / tenant

    def save(
        self, tenant: str, filename: str, purpose: str, source: BinaryIO, expires_after_s: int | None = None
    ) -> StoredFile:
        """Copy an upload in (from its spooled temporary file) and describe it."""
        folder = self._folder(tenant)
        folder.mkdir(parents=True, exist_ok=True)
        file_id = new_file_id()
        data_path = folder / file_id
        partial = folder / f".{file_id}.partial"
        with partial.open("wb") as out:
            shutil.copyfileobj(source, out, 1024 * 1024)
            size = out.tell()
        os.replace(partial, data_path)
        created_ns = time.time_ns()
        now = created_ns // 1_000_000_000
        expires_at = None if expires_after_s is None else now + expires_after_s
        stored = StoredFile(file_id, size, now, filename, purpose, expires_at, created_ns)
        meta = folder / f".{file_id}.json.partial"
        meta.write_bytes(orjson.dumps(asdict(stored)))
        os.replace(meta, folder / f"{file_id}.json")
        return stored

    def get(self, tenant: str, file_id: str) -> StoredFile | None:
        if not valid_file_id(file_id):
            return None
        try:
            stored = StoredFile(**orjson.loads((self._folder(tenant) / f"{file_id}.json").read_bytes()))
        except (FileNotFoundError, orjson.JSONDecodeError, TypeError):
            return None
        if stored.expires_at is not None and stored.expires_at <= time.time():
            self.delete(tenant, file_id)
            return None
        return stored

    def content_path(self, tenant: str, file_id: str) -> Path | None:
        if self.get(tenant, file_id) is None:
            return None
        path = self._folder(tenant) / file_id
        return path if path.is_file() else None

    def delete(self, tenant: str, file_id: str) -> bool:
        if not valid_file_id(file_id):
            return False
        folder = self._folder(tenant)
        meta = folder / f"{file_id}.json"
        existed = meta.is_file()
        # Metadata first: from then on the file is not listed, even if removing its bytes fails.
        meta.unlink(missing_ok=True)
        (folder / file_id).unlink(missing_ok=True)
        return existed

    def list(
        self, tenant: str, purpose: str | None = None, order: Order = "desc", after: str | None = None
    ) -> list[StoredFile]:
        folder = self._folder(tenant)
        if not folder.is_dir():
            return []
        files = []
        for meta in folder.glob("file-*.json"):
            stored = self.get(tenant, meta.name.removesuffix(".json"))
            if stored is not None and (purpose is None or stored.purpose == purpose):
                files.append(stored)
        files.sort(key=lambda f: (f.created_ns, f.id), reverse=order == "desc")
        if after is not None:
            ids = [f.id for f in files]
            files = files[ids.index(after) + 1 :] if after in ids else []
        return files
