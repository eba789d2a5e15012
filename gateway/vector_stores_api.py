"""OpenAI's Vector Stores API over the gateway's own retrieval: stores, their files (attached and
ingested in the background, with statuses the SDK's `create_and_poll` follows), file batches, and
search with OpenAI's attribute filters, answered from the tenant's own index with our hybrid
search and its confidence.

Routes (the tenant is the one whose API key the request carries; another tenant's ids are 404):
    POST/GET /v1/vector_stores, GET/POST/DELETE /v1/vector_stores/{id},
    POST/GET /v1/vector_stores/{id}/files, GET/DELETE /v1/vector_stores/{id}/files/{file_id},
    POST /v1/vector_stores/{id}/file_batches, GET .../file_batches/{batch_id}[/files],
    POST /v1/vector_stores/{id}/search
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api_routes import PolicyOf, answer, list_page, page_query
from gateway.errors import GatewayError, bad_request
from gateway.files import FileStore
from gateway.files_api import not_found as file_not_found
from gateway.ingest_queue import IngestQueue
from gateway.store_search import MAX_RESULTS, StoreSearch, store_not_found
from gateway.validation import parse_json_object
from gateway.vector_stores import (
    VectorStoreRegistry,
    corpus_store_id,
    file_counts,
    file_object,
    filter_problem,
    index_key,
    score_threshold,
    store_object,
)

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.policy import Policy
    from gateway.retrieval.service import RetrievalService

log = logging.getLogger("rag_gateway.vector_stores")
INGEST_BATCH_FILES = 64  # files ingested together (read into memory at once, then embedded in batches)
MAX_CHUNK_TOKENS = (100, 2048)  # OpenAI allows up to 4096; the chunker here stops at 2048


@dataclass(frozen=True, slots=True)
class PendingFile:
    tenant: str
    store_id: str
    file_id: str
    chunking: dict[str, int]


class VectorStoresAPI:
    def __init__(
        self,
        registry: VectorStoreRegistry,
        files: FileStore,
        retrieval: Callable[[], Awaitable[RetrievalService]],
        default_chunking: dict[str, int],
        policy_of: PolicyOf,
        queue: IngestQueue,
    ) -> None:
        self.registry = registry
        self.files = files
        self._retrieval = retrieval
        self.searcher = StoreSearch(registry, files, retrieval)
        self.default_chunking = default_chunking
        self._policy_of = policy_of
        self._tasks: set[asyncio.Task[None]] = set()  # ingestions running (held so they are not collected)
        self.queue = queue
        self._pending: dict[str, list[PendingFile]] = {}  # index -> files queued for it
        self._draining: set[str] = set()  # indexes whose worker is running

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        return parse_json_object(raw) if raw.strip() else {}  # an empty body: every field defaults

    async def _store(self, policy: Policy, store_id: str) -> dict[str, Any]:
        record = await self.searcher.record(policy, store_id)
        if store_id == corpus_store_id(policy.tenant):
            record = await self._with_documents(policy, record)
        return record

    async def _with_documents(self, policy: Policy, record: dict[str, Any]) -> dict[str, Any]:
        """The corpus store's files and the documents `rag-gateway ingest` and the admin API put in
        its index, listed alike (as their document ids), so its counts and lists are the corpus."""
        retrieval = await self._retrieval()
        index = await asyncio.to_thread(retrieval.store.tenant, policy.tenant)
        documents = await asyncio.to_thread(index.document_hashes)
        files = dict(record["files"])
        for doc_id in documents.keys() - files.keys():
            files[doc_id] = {
                "status": "completed", "created_at": record["created_at"], "attributes": {},
                "chunking": self.default_chunking, "usage_bytes": 0, "last_error": None,
            }  # fmt: skip
        return {**record, "files": files}

    # -- stores -----------------------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        async def handle(policy: Policy) -> Any:
            body = await self._body(request)
            name = body.get("name") or ""
            if not isinstance(name, str):
                raise bad_request("name must be a string", param="name")
            metadata = _metadata(body.get("metadata"))
            days = _expiry_days(body.get("expires_after"))
            chunking = self._chunking(body.get("chunking_strategy"))
            file_ids = body.get("file_ids") or []
            if not isinstance(file_ids, list) or not all(isinstance(f, str) for f in file_ids):
                raise bad_request("file_ids must be a list of file ids", param="file_ids")
            await self._require_files(policy, file_ids)
            await self._retrieval()  # say now, not per file, when retrieval is off
            self.queue.reserve(policy.tenant, len(file_ids))
            try:
                record = await asyncio.to_thread(
                    self.registry.create, policy.tenant, name, metadata, days, chunking
                )
            except BaseException:
                self.queue.release(policy.tenant, len(file_ids))
                raise
            await self._attach_reserved(policy, record["id"], file_ids, {}, chunking)
            return store_object(await self._store(policy, record["id"]))

        return await answer(request, self._policy_of, handle, counted=True)

    async def list(self, request: Request) -> Response:
        async def handle(policy: Policy) -> Any:
            records = await asyncio.to_thread(self.registry.list, policy.tenant)
            if policy.retrieval.enabled:
                # Listed beside the others, counting its CLI and admin documents as retrieve does.
                corpus = corpus_store_id(policy.tenant)
                records = [r for r in records if r["id"] != corpus] + [await self._store(policy, corpus)]
            return _page([store_object(r) for r in records], request, key=lambda o: o["created_at"])

        return await answer(request, self._policy_of, handle)

    async def retrieve(self, request: Request) -> Response:
        async def handle(policy: Policy) -> Any:
            return store_object(await self._store(policy, request.path_params["vector_store_id"]))

        return await answer(request, self._policy_of, handle)

    async def modify(self, request: Request) -> Response:
        async def handle(policy: Policy) -> Any:
            store_id = request.path_params["vector_store_id"]
            await self._store(policy, store_id)
            body = await self._body(request)
            fields: dict[str, Any] = {"last_active_at": int(time.time())}
            if "name" in body:
                if not isinstance(body["name"], str):
                    raise bad_request("name must be a string", param="name")
                fields["name"] = body["name"]
            if "metadata" in body:
                fields["metadata"] = _metadata(body["metadata"])
            if "expires_after" in body:
                fields["expires_after_days"] = _expiry_days(body["expires_after"])
            record = await asyncio.to_thread(self.registry.update, policy.tenant, store_id, **fields)
            if record is None:
                raise store_not_found(store_id)
            return store_object(record)

        return await answer(request, self._policy_of, handle)

    async def delete(self, request: Request) -> Response:
        async def handle(policy: Policy) -> Any:
            store_id = request.path_params["vector_store_id"]
            await self._store(policy, store_id)
            if store_id == corpus_store_id(policy.tenant):
                raise bad_request(
                    "This store is the tenant's retrieval corpus (its policy's retrieval): it is not "
                    "deleted through the API. Detach its files, or turn retrieval off in the policy.",
                    param="vector_store_id",
                )
            retrieval = await self._retrieval()
            await asyncio.to_thread(self.registry.delete, policy.tenant, store_id)
            await asyncio.to_thread(retrieval.store.drop_tenant, index_key(policy.tenant, store_id))
            return {"id": store_id, "object": "vector_store.deleted", "deleted": True}

        return await answer(request, self._policy_of, handle)

    # -- files ------------------------------------------------------------------------------------

    async def attach(self, request: Request) -> Response:
        async def handle(policy: Policy) -> Any:
            store_id = request.path_params["vector_store_id"]
            record = await self._store(policy, store_id)
            body = await self._body(request)
            file_id = body.get("file_id")
            if not isinstance(file_id, str) or not file_id:
                raise bad_request(
                    "file_id is required: the id of a file uploaded with POST /v1/files", param="file_id"
                )
            attributes, chunking = await self._attachment(policy, record, body, [file_id])
            self.queue.reserve(policy.tenant, 1)
            (entry,) = await self._attach_reserved(policy, store_id, [file_id], attributes, chunking)
            return file_object(store_id, file_id, entry)

        return await answer(request, self._policy_of, handle, counted=True)

    async def list_files(self, request: Request) -> Response:
        async def handle(policy: Policy) -> Any:
            store_id = request.path_params["vector_store_id"]
            record = await self._store(policy, store_id)
            return _file_page(store_id, record, list(record["files"]), request)

        return await answer(request, self._policy_of, handle)

    async def retrieve_file(self, request: Request) -> Response:
        async def handle(policy: Policy) -> Any:
            store_id, file_id = request.path_params["vector_store_id"], request.path_params["file_id"]
            record = await self._store(policy, store_id)
            entry = record["files"].get(file_id)
            if entry is None:
                raise file_not_found(file_id)
            return file_object(store_id, file_id, entry)

        return await answer(request, self._policy_of, handle)

    async def detach(self, request: Request) -> Response:
        async def handle(policy: Policy) -> Any:
            store_id, file_id = request.path_params["vector_store_id"], request.path_params["file_id"]
            record = await self._store(policy, store_id)
            if file_id not in record["files"]:
                raise file_not_found(file_id)
            # A document the CLI or the admin API ingested has no registry entry, only its chunks.
            await asyncio.to_thread(self.registry.remove_file, policy.tenant, store_id, file_id)
            retrieval = await self._retrieval()
            index = await asyncio.to_thread(retrieval.store.tenant, index_key(policy.tenant, store_id))
            await asyncio.to_thread(index.apply, deletes=[file_id])
            return {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}

        return await answer(request, self._policy_of, handle)

    # -- file batches -----------------------------------------------------------------------------

    async def create_batch(self, request: Request) -> Response:
        async def handle(policy: Policy) -> Any:
            store_id = request.path_params["vector_store_id"]
            record = await self._store(policy, store_id)
            body = await self._body(request)
            file_ids = body.get("file_ids")
            if (
                not isinstance(file_ids, list)
                or not file_ids
                or not all(isinstance(f, str) for f in file_ids)
            ):
                raise bad_request("file_ids must be a non-empty list of file ids", param="file_ids")
            attributes, chunking = await self._attachment(policy, record, body, file_ids)
            batch_id = "vsfb_" + secrets.token_hex(12)
            self.queue.reserve(policy.tenant, len(file_ids))
            try:
                await asyncio.to_thread(self.registry.add_batch, policy.tenant, store_id, batch_id, file_ids)
            except BaseException:
                self.queue.release(policy.tenant, len(file_ids))
                raise
            await self._attach_reserved(policy, store_id, file_ids, attributes, chunking)
            return _batch_object(store_id, batch_id, await self._store(policy, store_id))

        return await answer(request, self._policy_of, handle, counted=True)

    async def retrieve_batch(self, request: Request) -> Response:
        async def handle(policy: Policy) -> Any:
            store_id, batch_id = request.path_params["vector_store_id"], request.path_params["batch_id"]
            return _batch_object(store_id, batch_id, await self._store(policy, store_id))

        return await answer(request, self._policy_of, handle)

    async def batch_files(self, request: Request) -> Response:
        async def handle(policy: Policy) -> Any:
            store_id, batch_id = request.path_params["vector_store_id"], request.path_params["batch_id"]
            record = await self._store(policy, store_id)
            batch = record.get("batches", {}).get(batch_id)
            if batch is None:
                raise _batch_not_found(batch_id)
            return _file_page(
                store_id, record, [f for f in batch["file_ids"] if f in record["files"]], request
            )

        return await answer(request, self._policy_of, handle)

    # -- search -----------------------------------------------------------------------------------

    async def search(self, request: Request) -> Response:
        async def handle(policy: Policy) -> Any:
            store_id = request.path_params["vector_store_id"]
            record = await self.searcher.searchable(policy, store_id)
            body = await self._body(request)
            queries = _queries(body.get("query"))
            limit = body.get("max_num_results", 10)
            if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_RESULTS:
                raise bad_request(
                    f"max_num_results must be an integer from 1 to {MAX_RESULTS}", param="max_num_results"
                )
            condition = body.get("filters")
            if condition is not None and (problem := filter_problem(condition)):
                raise bad_request(problem, param="filters")
            threshold = score_threshold(body.get("ranking_options"))
            if body.get("rewrite_query"):
                raise bad_request(
                    "rewrite_query is not supported: the gateway searches the query as given (hybrid "
                    "dense + BM25 search needs no rewrite). Leave it false.",
                    param="rewrite_query",
                )
            found = await self.searcher.search(
                policy, [(store_id, record)], queries, limit, condition, threshold
            )
            page = {
                "object": "vector_store.search_results.page",
                "search_query": queries,
                "data": [result.as_openai() for result in found.results],
                "has_more": False,
                "next_page": None,
            }
            # Ours: how likely these results answer the query (the refusal policy's signal), in a
            # header as on chat answers: OpenAI's page schema admits no extra field.
            return JSONResponse(page, headers={"x-gateway-confidence": f"{found.confidence:.3f}"})

        return await answer(request, self._policy_of, handle, counted=True)

    # -- ingestion --------------------------------------------------------------------------------

    async def resume(self) -> int:
        """Ingest again the files a stopped process left `in_progress` (at start-up). Re-ingesting
        is idempotent (unchanged content is skipped), so replicas resuming the same file is harmless."""
        pending = await asyncio.to_thread(self.registry.in_progress)
        for tenant, store_id, file_id, chunking in pending:
            log.info("vector store %s: resuming the ingestion of %s", store_id, file_id)
            self.queue.reserve(tenant, 1, force=True)  # accepted before the stop: never refused
            self._start_ingest(tenant, store_id, file_id, chunking)
        return len(pending)

    def _start_ingest(self, tenant: str, store_id: str, file_id: str, chunking: dict[str, int]) -> None:
        """Queue the file (its queue place already reserved) for its index's worker."""
        key = index_key(tenant, store_id)
        self._pending.setdefault(key, []).append(PendingFile(tenant, store_id, file_id, chunking))
        if key not in self._draining:
            self._draining.add(key)
            task = asyncio.get_running_loop().create_task(self._drain(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _attachment(
        self, policy: Policy, record: dict[str, Any], body: dict[str, Any], file_ids: list[str]
    ) -> tuple[dict[str, Any], dict[str, int]]:
        """The attributes and chunking of files about to be attached, once the files and retrieval
        are known to be there."""
        await self._require_files(policy, file_ids)
        attributes = _attributes(body.get("attributes"))
        chunking = self._chunking(body.get("chunking_strategy"), record.get("chunking"))
        await self._retrieval()
        return attributes, chunking

    async def _require_files(self, policy: Policy, file_ids: list[str]) -> None:
        for file_id in file_ids:
            if await asyncio.to_thread(self.files.get, policy.tenant, file_id) is None:
                raise file_not_found(file_id)

    async def _attach_reserved(
        self,
        policy: Policy,
        store_id: str,
        file_ids: list[str],
        attributes: dict[str, Any],
        chunking: dict[str, int],
    ) -> list[dict[str, Any]]:
        """Attach files whose queue places are reserved; each started ingestion frees its own."""
        entries: list[dict[str, Any]] = []
        try:
            for file_id in file_ids:
                entries.append(await self._attach(policy, store_id, file_id, attributes, chunking))
        finally:
            self.queue.release(policy.tenant, len(file_ids) - len(entries))
        return entries

    async def _attach(
        self,
        policy: Policy,
        store_id: str,
        file_id: str,
        attributes: dict[str, Any],
        chunking: dict[str, int],
    ) -> dict[str, Any]:
        stored = await asyncio.to_thread(self.files.get, policy.tenant, file_id)
        assert stored is not None  # checked by the caller
        entry = await asyncio.to_thread(
            self.registry.update_file, policy.tenant, store_id, file_id,
            status="in_progress", created_at=int(time.time()), attributes=attributes, chunking=chunking,
            usage_bytes=stored.bytes, last_error=None,
        )  # fmt: skip
        if entry is None:
            raise store_not_found(store_id)
        self._start_ingest(policy.tenant, store_id, file_id, chunking)
        return entry

    async def _drain(self, key: str) -> None:
        """Ingest an index's queued files, as many together as have queued meanwhile: one file at a
        time would embed in batches of one and rebuild the index's BM25 once per file."""
        try:
            while self._pending.get(key):
                # files.ingest_concurrency indexes at a time (1 by default): each ingest already
                # uses the parse threads and the embedder's cores.
                async with self.queue.slot(key):
                    batch = self._take(key)
                    await self._ingest(batch)
        finally:
            # No await since the loop saw the list empty: a file queued later starts a new drain.
            self._draining.discard(key)
            self._pending.pop(key, None)

    def _take(self, key: str) -> list[PendingFile]:
        """The next files of the index that share the first one's chunking (one Ingestor's settings)."""
        pending = self._pending[key]
        chunking = pending[0].chunking
        batch: list[PendingFile] = []
        rest: list[PendingFile] = []
        for file in pending:
            if file.chunking == chunking and len(batch) < INGEST_BATCH_FILES:
                batch.append(file)
            else:
                rest.append(file)
        self._pending[key] = rest
        return batch

    async def _ingest(self, batch: list[PendingFile]) -> None:
        first = batch[0]
        tenant, store_id = first.tenant, first.store_id
        retrieval: RetrievalService | None = None
        try:
            retrieval = await self._retrieval()
            outcomes = await asyncio.to_thread(self._ingest_sync, retrieval, batch)
        except Exception as exc:  # the store or the embedder failed: the files say so, nothing crashes
            log.warning("vector store %s: %d files failed to ingest: %s", store_id, len(batch), exc)
            error = {"code": "server_error", "message": f"ingestion failed: {type(exc).__name__}"}
            outcomes = {f.file_id: ("failed", error) for f in batch}
        finally:
            self.queue.release(tenant, len(batch))
        updates = {
            file_id: {"status": status, "last_error": error} for file_id, (status, error) in outcomes.items()
        }
        detached = await asyncio.to_thread(self.registry.finish_files, tenant, store_id, updates)
        if detached and retrieval is not None:
            # Detached (or the store deleted) while being ingested: its chunks must not linger.
            try:
                index = await asyncio.to_thread(retrieval.store.tenant, index_key(tenant, store_id))
                await asyncio.to_thread(index.apply, deletes=sorted(detached))
            except Exception as exc:  # searches skip chunks of unattached files anyway
                log.warning("vector store %s: chunks of detached files left in the index: %s", store_id, exc)

    def _ingest_sync(
        self, retrieval: RetrievalService, batch: list[PendingFile]
    ) -> dict[str, tuple[str, dict[str, str] | None]]:
        from gateway.retrieval.chunking import ChunkingConfig
        from gateway.retrieval.ingest import Ingestor, IngestSettings

        first = batch[0]
        outcomes: dict[str, tuple[str, dict[str, str] | None]] = {}
        items: list[tuple[str, bytes, str | None]] = []
        seen: set[str] = set()
        for file in batch:
            if file.file_id in seen:
                continue  # attached again before its ingestion began: read and embedded once
            seen.add(file.file_id)
            stored = self.files.get(file.tenant, file.file_id)
            path = self.files.content_path(file.tenant, file.file_id)
            if stored is None or path is None:
                error = {"code": "invalid_file", "message": f"the file {file.file_id} was deleted"}
                outcomes[file.file_id] = ("failed", error)
            else:
                items.append((stored.filename, path.read_bytes(), file.file_id))
        if not items:
            return outcomes
        key = index_key(first.tenant, first.store_id)
        settings = IngestSettings(
            chunking=ChunkingConfig(
                max_tokens=first.chunking["max_tokens"], overlap_tokens=first.chunking["overlap_tokens"]
            ),
            max_file_bytes=max(max(len(data) for _, data, _ in items), 1),
        )
        report = Ingestor(retrieval.store.tenant(key), retrieval.embedder, settings).ingest_many(
            key, items, cite_name=True
        )
        reports = {f.doc_id: f for f in report.files}
        for _, _, file_id in items:
            assert file_id is not None
            outcome = reports.get(file_id)
            if outcome is not None and outcome.outcome in ("added", "updated", "unchanged"):
                outcomes[file_id] = ("completed", None)
                continue
            reason = (
                outcome.reason if outcome is not None and outcome.reason else "nothing could be read from it"
            )
            code = "unsupported_file" if "unsupported" in reason else "invalid_file"
            outcomes[file_id] = ("failed", {"code": code, "message": reason})
        return outcomes

    def _chunking(self, strategy: Any, store_default: dict[str, int] | None = None) -> dict[str, int]:
        if strategy is None:
            return store_default or self.default_chunking
        if not isinstance(strategy, dict) or strategy.get("type") not in ("auto", "static"):
            raise bad_request("chunking_strategy.type must be 'auto' or 'static'", param="chunking_strategy")
        if strategy["type"] == "auto":
            return self.default_chunking
        static = strategy.get("static")
        if not isinstance(static, dict):
            raise bad_request(
                "chunking_strategy.static is required for type 'static'", param="chunking_strategy"
            )
        size, overlap = static.get("max_chunk_size_tokens"), static.get("chunk_overlap_tokens")
        low, high = MAX_CHUNK_TOKENS
        if not isinstance(size, int) or not low <= size <= high:
            raise bad_request(
                f"chunking_strategy.static.max_chunk_size_tokens must be from {low} to {high} here "
                "(the gateway's chunker stops at 2048 tokens)",
                param="chunking_strategy.static.max_chunk_size_tokens",
            )
        if not isinstance(overlap, int) or not 0 <= overlap <= size // 2:
            raise bad_request(
                "chunking_strategy.static.chunk_overlap_tokens must be from 0 to half of "
                "max_chunk_size_tokens",
                param="chunking_strategy.static.chunk_overlap_tokens",
            )
        return {"max_tokens": size, "overlap_tokens": overlap}


def _batch_not_found(batch_id: str) -> GatewayError:
    return GatewayError(
        404, f"No file batch found with id '{batch_id}'.", code="batch_not_found", param="batch_id"
    )


def _batch_object(store_id: str, batch_id: str, record: dict[str, Any]) -> dict[str, Any]:
    batch = record.get("batches", {}).get(batch_id)
    if batch is None:
        raise _batch_not_found(batch_id)
    counts = file_counts(
        {"files": {f: record["files"][f] for f in batch["file_ids"] if f in record["files"]}}
    )
    return {
        "id": batch_id,
        "object": "vector_store.files_batch",
        "created_at": batch["created_at"],
        "vector_store_id": store_id,
        "status": "in_progress" if counts["in_progress"] else "completed",
        "file_counts": counts,
    }


def _file_page(
    store_id: str, record: dict[str, Any], file_ids: list[str], request: Request
) -> dict[str, Any]:
    wanted = request.query_params.get("filter")
    if wanted is not None and wanted not in ("in_progress", "completed", "failed", "cancelled"):
        raise bad_request("filter must be in_progress, completed, failed or cancelled", param="filter")
    objects = [
        file_object(store_id, f, record["files"][f])
        for f in file_ids
        if wanted is None or record["files"][f]["status"] == wanted
    ]
    return _page(objects, request, key=lambda o: o["created_at"])


def _page(
    objects: list[dict[str, Any]], request: Request, key: Callable[[dict[str, Any]], Any]
) -> dict[str, Any]:
    """OpenAI's cursor page: `limit` (1-100, 20), `order` (desc), `after` / `before` ids."""
    query = request.query_params
    order, limit = page_query(query, 20, 100)
    ordered = sorted(objects, key=lambda o: (key(o), o["id"]), reverse=order == "desc")
    ids = [o["id"] for o in ordered]
    if (after := query.get("after")) is not None:
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    if (before := query.get("before")) is not None:
        ordered = ordered[: ids.index(before)] if before in ids else []
    return list_page(ordered[:limit], len(ordered) > limit)


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 16:
        raise bad_request("metadata must be an object of at most 16 pairs", param="metadata")
    for key, item in value.items():
        if len(key) > 64 or not isinstance(item, str) or len(item) > 512:
            raise bad_request(
                "metadata keys are at most 64 characters and values strings of at most 512", param="metadata"
            )
    return dict(value)


def _attributes(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 16:
        raise bad_request("attributes must be an object of at most 16 pairs", param="attributes")
    for key, item in value.items():
        if (
            len(key) > 256
            or not isinstance(item, str | int | float | bool)
            or (isinstance(item, str) and len(item) > 512)
        ):
            raise bad_request(
                "attributes map keys of at most 256 characters to strings (at most 512), numbers or booleans",
                param="attributes",
            )
    return dict(value)


def _expiry_days(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("anchor") != "last_active_at":
        raise bad_request("expires_after.anchor must be 'last_active_at'", param="expires_after.anchor")
    days = value.get("days")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 365:
        raise bad_request("expires_after.days must be an integer from 1 to 365", param="expires_after.days")
    return days


def _queries(value: Any) -> list[str]:
    if isinstance(value, str) and value.strip():
        return [value]
    if isinstance(value, list) and value and all(isinstance(q, str) and q.strip() for q in value):
        return list(value)
    raise bad_request("query is required: a string, or a list of strings", param="query")


def install(gateway: Gateway) -> VectorStoresAPI:
    from gateway.services import retrieval_if_enabled

    async def retrieval() -> RetrievalService:
        service = await retrieval_if_enabled(gateway.services)
        if service is None:
            raise bad_request(
                "Vector stores need retrieval, which gateway.yaml turns off (retrieval.enabled: false).",
                code="retrieval_disabled",
            )
        return service

    config = gateway.config
    root = config.resolve(config.files.dir)
    chunking = {
        "max_tokens": config.retrieval.chunk_max_tokens,
        "overlap_tokens": config.retrieval.chunk_overlap_tokens,
    }
    queue = IngestQueue(
        config.files.ingest_concurrency, config.files.ingest_queue_max, config.files.ingest_queue_per_tenant
    )
    return VectorStoresAPI(
        VectorStoreRegistry(root), gateway.files.store, retrieval, chunking, gateway.caller_policy, queue
    )
