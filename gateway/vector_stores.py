"""Tenants' vector stores (OpenAI's Vector Stores API): what each store is and which files it holds.

A store's record (name, metadata, expiry, and per attached file its status, attributes, chunking
and last error) is one JSON file, `<files.dir>/<tenant>/vector_stores/<id>.json`, rewritten
through a rename under a process lock. Its chunks live in the retrieval index named
`<tenant>/<store id>` (gateway.retrieval.index), one document per attached file whose doc_id is the
file's id, so a search hit names its file. OpenAI's attribute filters are evaluated here, on the
files' attributes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from gateway.errors import bad_request
from gateway.files import is_own_id, new_id

ID_PREFIX = "vs_"
COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")
RANKERS = ("auto", "none", "default-2024-11-15")


def new_store_id() -> str:
    return new_id(ID_PREFIX)


def valid_store_id(store_id: str) -> bool:
    return is_own_id(store_id, ID_PREFIX)


def corpus_store_id(tenant: str) -> str:
    """The id under which a tenant's retrieval corpus (the index its policy's retrieval searches)
    appears as a vector store: fixed, so clients can keep it."""
    return ID_PREFIX + hashlib.sha256(f"corpus:{tenant}".encode()).hexdigest()[:24]


def index_key(tenant: str, store_id: str) -> str:
    """The retrieval index that holds a store's chunks: the tenant's own for its corpus store."""
    return tenant if store_id == corpus_store_id(tenant) else f"{tenant}/{store_id}"


class VectorStoreRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _locked(self, tenant: str) -> Iterator[None]:
        """Changes are read-modify-write: serialised between this process's threads, and by an
        flock between the replicas that share files.dir, so none overwrites another's change."""
        folder = self.root / tenant / "vector_stores"
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock, open(folder / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield  # closing the file releases the flock

    def _path(self, tenant: str, store_id: str) -> Path:
        return self.root / tenant / "vector_stores" / f"{store_id}.json"

    def _write(self, tenant: str, record: dict[str, Any]) -> None:
        path = self._path(tenant, record["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".json.partial")
        partial.write_bytes(orjson.dumps(record))
        os.replace(partial, path)

    def create(
        self,
        tenant: str,
        name: str,
        metadata: dict[str, str],
        expires_after_days: int | None,
        chunking: dict[str, int] | None,
        store_id: str | None = None,
    ) -> dict[str, Any]:
        now = int(time.time())
        record = {
            "id": store_id or new_store_id(),
            "created_at": now,
            "last_active_at": now,
            "name": name,
            "metadata": metadata,
            "expires_after_days": expires_after_days,
            "chunking": chunking,
            "files": {},
        }
        with self._locked(tenant):
            existing = self.get(tenant, record["id"]) if store_id else None
            if existing is not None:
                return existing  # the corpus store, made by another request meanwhile
            self._write(tenant, record)
        return record

    def get(self, tenant: str, store_id: str) -> dict[str, Any] | None:
        if not valid_store_id(store_id):
            return None
        try:
            return orjson.loads(self._path(tenant, store_id).read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None

    def list(self, tenant: str) -> list[dict[str, Any]]:
        folder = self.root / tenant / "vector_stores"
        if not folder.is_dir():
            return []
        records = [self.get(tenant, p.stem) for p in folder.glob(f"{ID_PREFIX}*.json")]
        return [r for r in records if r is not None]

    def update(self, tenant: str, store_id: str, **fields: Any) -> dict[str, Any] | None:
        with self._locked(tenant):
            record = self.get(tenant, store_id)
            if record is None:
                return None
            record.update(fields)
            self._write(tenant, record)
            return record

    def update_file(self, tenant: str, store_id: str, file_id: str, **fields: Any) -> dict[str, Any] | None:
        """Change an attached file's entry (creating it with these fields); None when the store is gone."""
        with self._locked(tenant):
            record = self.get(tenant, store_id)
            if record is None:
                return None
            entry = record["files"].setdefault(file_id, {})
            entry.update(fields)
            record["last_active_at"] = int(time.time())
            self._write(tenant, record)
            return entry

    def finish_files(self, tenant: str, store_id: str, updates: dict[str, dict[str, Any]]) -> set[str]:
        """Record ingestion results in one write; the ids of files no longer attached (detached,
        or the store deleted, meanwhile) are returned, and their entries are not brought back."""
        with self._locked(tenant):
            record = self.get(tenant, store_id)
            if record is None:
                return set(updates)
            gone = set()
            for file_id, fields in updates.items():
                entry = record["files"].get(file_id)
                if entry is None:
                    gone.add(file_id)
                else:
                    entry.update(fields)
            record["last_active_at"] = int(time.time())
            self._write(tenant, record)
            return gone

    def add_batch(self, tenant: str, store_id: str, batch_id: str, file_ids: list[str]) -> None:
        with self._locked(tenant):
            record = self.get(tenant, store_id)
            if record is not None:
                record.setdefault("batches", {})[batch_id] = {
                    "file_ids": file_ids,
                    "created_at": int(time.time()),
                }
                self._write(tenant, record)

    def remove_file(self, tenant: str, store_id: str, file_id: str) -> bool:
        with self._locked(tenant):
            record = self.get(tenant, store_id)
            if record is None or file_id not in record["files"]:
                return False
            del record["files"][file_id]
            self._write(tenant, record)
            return True

    def in_progress(self) -> list[tuple[str, str, str, dict[str, int]]]:
        """(tenant, store id, file id, chunking) of every file left `in_progress`: a process that
        was ingesting it stopped."""
        found = []
        for folder in sorted(self.root.glob("*/vector_stores")):
            tenant = folder.parent.name
            for record in self.list(tenant):
                for file_id, entry in record["files"].items():
                    if entry.get("status") == "in_progress":
                        found.append((tenant, record["id"], file_id, entry["chunking"]))
        return found

    def delete(self, tenant: str, store_id: str) -> bool:
        with self._locked(tenant):
            if self.get(tenant, store_id) is None:
                return False
            self._path(tenant, store_id).unlink(missing_ok=True)
            return True


def file_counts(record: dict[str, Any]) -> dict[str, int]:
    counts = {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0}
    for entry in record["files"].values():
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    counts["total"] = sum(counts.values())
    return counts


def store_object(record: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's vector store object."""
    counts = file_counts(record)
    days = record.get("expires_after_days")
    expires_at = record["last_active_at"] + days * 86400 if days else None
    status = "in_progress" if counts["in_progress"] else "completed"
    if expires_at is not None and expires_at <= time.time():
        status = "expired"
    body: dict[str, Any] = {
        "id": record["id"],
        "object": "vector_store",
        "created_at": record["created_at"],
        "name": record["name"],
        "usage_bytes": sum(e.get("usage_bytes", 0) for e in record["files"].values()),
        "file_counts": counts,
        "status": status,
        "last_active_at": record["last_active_at"],
        "metadata": record["metadata"],
        "expires_at": expires_at,
    }
    if days:
        body["expires_after"] = {"anchor": "last_active_at", "days": days}
    return body


def file_object(store_id: str, file_id: str, entry: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's vector store file object."""
    chunking = entry["chunking"]
    return {
        "id": file_id,
        "object": "vector_store.file",
        "usage_bytes": entry.get("usage_bytes", 0),
        "created_at": entry["created_at"],
        "vector_store_id": store_id,
        "status": entry["status"],
        "last_error": entry.get("last_error"),
        "chunking_strategy": {
            "type": "static",
            "static": {
                "max_chunk_size_tokens": chunking["max_tokens"],
                "chunk_overlap_tokens": chunking["overlap_tokens"],
            },
        },
        "attributes": entry.get("attributes") or {},
    }


def matches(attributes: dict[str, Any], condition: dict[str, Any]) -> bool:
    """OpenAI's comparison and compound filters, on one file's attributes. A missing key matches
    only `ne` and `nin`; an ordering comparison between a number and a string does not match."""
    kind = condition["type"]
    if kind in ("and", "or"):
        results = (matches(attributes, c) for c in condition["filters"])
        return all(results) if kind == "and" else any(results)
    key, value = condition["key"], condition["value"]
    if key not in attributes:
        return kind in ("ne", "nin")
    actual = attributes[key]
    if kind == "eq":
        return actual == value
    if kind == "ne":
        return actual != value
    if kind == "in":
        return actual in value
    if kind == "nin":
        return actual not in value
    numeric = (int, float)
    if isinstance(actual, bool) or isinstance(value, bool):
        return False
    if not (isinstance(actual, numeric) and isinstance(value, numeric)) and not (
        isinstance(actual, str) and isinstance(value, str)
    ):
        return False
    return {"gt": actual > value, "gte": actual >= value, "lt": actual < value, "lte": actual <= value}[kind]


def filter_problem(condition: Any, path: str = "filters") -> str | None:
    """What is wrong with a filter (for a 400 naming it), or None when it is well formed."""
    if not isinstance(condition, dict) or "type" not in condition:
        return f"{path} must be an object with a `type`"
    kind = condition["type"]
    if kind in ("and", "or"):
        filters = condition.get("filters")
        if not isinstance(filters, list) or not filters:
            return f"{path}.filters must be a non-empty list of filters"
        for i, inner in enumerate(filters):
            problem = filter_problem(inner, f"{path}.filters[{i}]")
            if problem:
                return problem
        return None
    if kind not in COMPARISONS:
        return f"{path}.type must be one of {', '.join((*COMPARISONS, 'and', 'or'))}, not {kind!r}"
    if not isinstance(condition.get("key"), str):
        return f"{path}.key must be a string"
    if "value" not in condition:
        return f"{path}.value is required"
    value = condition["value"]
    if kind in ("in", "nin"):
        if not isinstance(value, list):
            return f"{path}.value must be a list for `{kind}`"
    elif not isinstance(value, str | int | float | bool):
        return f"{path}.value must be a string, number or boolean for `{kind}`"
    return None


def score_threshold(options: Any, path: str = "ranking_options") -> float:
    """`ranking_options.score_threshold` (0 when absent), or a 400 naming what is wrong."""
    if options is None:
        return 0.0
    if not isinstance(options, dict):
        raise bad_request(f"{path} must be an object", param=path)
    ranker = options.get("ranker", "auto")
    if ranker not in RANKERS:
        raise bad_request(f"{path}.ranker must be one of {', '.join(RANKERS)}", param=f"{path}.ranker")
    threshold = options.get("score_threshold", 0.0)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
        raise bad_request(
            f"{path}.score_threshold must be a number from 0 to 1", param=f"{path}.score_threshold"
        )
    return float(threshold)
