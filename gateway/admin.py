"""Admin API: `POST /admin/tenants/{tenant}/documents` ingests documents into a tenant's corpus.

Authenticated with the admin key (the environment variable named by `server.admin_key_env`).
Body: JSON `{"documents": [{"name": "faq.md", "content": "..."} | {"name": "scan.pdf",
"content_base64": "..."}], "doc_id": optional per document}`, or raw bytes with `?name=file.ext`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.errors import GatewayError, bad_request
from gateway.policy import TENANT_RE
from middleware.auth import bearer_or_api_key

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("rag_gateway.admin")


async def store_failure(gateway: Gateway, action: str, exc: Exception) -> Response:
    """The answer to an ingest or reindex that raised: 503 when the vector store is away, else 500.

    Either way the tenant's previous corpus stays live: writes go to a new generation that only
    becomes visible once complete.
    """
    probe = gateway.services.readiness.get("vector_store")
    try:
        reachable, _ = await asyncio.wait_for(probe(), timeout=2.0) if probe else (True, "")
    except Exception:
        reachable = False
    if not reachable:
        log.warning("%s failed: the vector store is unreachable: %s", action, exc)
        error = GatewayError(
            503,
            f"The {action} did not run to the end: the vector store did not answer. The previous "
            "corpus stays searchable; retry once /readyz reports the vector store ok.",
            type="server_error",
            code="retrieval_unavailable",
            headers={"Retry-After": "5"},
        )
    else:
        log.error("%s failed", action, exc_info=exc)
        error = GatewayError(
            500,
            f"The {action} failed ({type(exc).__name__}); the gateway log has the details. The "
            "previous corpus stays searchable.",
            type="server_error",
            code="internal_error",
        )
    return Response(
        error.body(), status_code=error.status, media_type="application/json", headers=error.headers
    )


def check_admin(gateway: Gateway, request: Request) -> None:
    env = gateway.config.server.admin_key_env
    expected = os.environ.get(env) if env else None
    if not expected:
        raise GatewayError(
            403,
            "The admin API is disabled: set server.admin_key_env in gateway.yaml and that "
            "variable in the environment.",
            type="permission_error",
            code="admin_disabled",
        )
    key = bearer_or_api_key({k.lower(): v for k, v in request.headers.items()})
    given = hashlib.sha256((key or "").encode()).digest()
    if not hmac.compare_digest(given, hashlib.sha256(expected.encode()).digest()):
        raise GatewayError(
            401,
            "Admin endpoints need the admin key as 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
        )


def admin_tenant(gateway: Gateway, request: Request) -> str:
    """The {tenant} of an admin route, once the admin key is checked and the tenant exists."""
    check_admin(gateway, request)
    tenant = request.path_params["tenant"]
    if not TENANT_RE.match(tenant) or tenant not in gateway.policies.snapshot.policies:
        raise GatewayError(
            404, f"No tenant {tenant!r} is configured.", code="tenant_not_found", param="tenant"
        )
    return tenant


def retrieval_service(gateway: Gateway) -> Any:
    retrieval = gateway.services.retrieval
    if retrieval is None:
        raise GatewayError(
            409,
            "Retrieval is disabled in gateway.yaml (retrieval.enabled: false).",
            code="retrieval_disabled",
        )
    return retrieval


def _documents(body: Any) -> list[tuple[str, bytes, str | None]]:
    if not isinstance(body, dict) or not isinstance(body.get("documents"), list) or not body["documents"]:
        raise bad_request(
            'send {"documents": [{"name": ..., "content" or "content_base64": ...}]}', param="documents"
        )
    documents = []
    for i, doc in enumerate(body["documents"]):
        where = f"documents[{i}]"
        if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not doc["name"].strip():
            raise bad_request(f"{where}.name must be a file name such as 'faq.md'", param=f"{where}.name")
        doc_id = doc.get("doc_id")
        if doc_id is not None and (not isinstance(doc_id, str) or not doc_id):
            raise bad_request(f"{where}.doc_id must be a non-empty string", param=f"{where}.doc_id")
        if isinstance(doc.get("content"), str):
            data = doc["content"].encode("utf-8")
        elif isinstance(doc.get("content_base64"), str):
            try:
                data = base64.b64decode(doc["content_base64"], validate=True)
            except (binascii.Error, ValueError):
                raise bad_request(
                    f"{where}.content_base64 is not valid base64", param=f"{where}.content_base64"
                ) from None
        else:
            raise bad_request(
                f"{where} needs 'content' (text) or 'content_base64' (binary files)", param=f"{where}.content"
            )
        documents.append((doc["name"].strip(), data, doc_id))
    return documents


async def ingest_documents(gateway: Gateway, request: Request) -> Response:
    try:
        tenant = admin_tenant(gateway, request)
        retrieval = retrieval_service(gateway)
        limit = gateway.config.retrieval.max_file_bytes * 2
        raw = await request.body()
        if len(raw) > limit:
            raise GatewayError(413, f"The upload is larger than {limit} bytes.", code="request_too_large")
        name = request.query_params.get("name")
        if name:
            documents = [(name, raw, request.query_params.get("doc_id"))]
        else:
            try:
                documents = _documents(orjson.loads(raw))
            except orjson.JSONDecodeError:
                raise bad_request(
                    "the body must be JSON, or raw file bytes with ?name=file.ext", code="invalid_json"
                ) from None
    except GatewayError as error:
        return Response(error.body(), status_code=error.status, media_type="application/json")

    from gateway.retrieval.ingest import Ingestor, IngestReport
    from gateway.services import ingest_settings

    def run() -> IngestReport:
        ingestor = Ingestor(
            retrieval.store.tenant(tenant), retrieval.embedder, ingest_settings(gateway.config)
        )
        combined = IngestReport(tenant)
        for name, data, doc_id in documents:
            report = ingestor.ingest_bytes(tenant, name, data, doc_id)
            combined.files.extend(report.files)
            combined.chunks_embedded += report.chunks_embedded
            combined.seconds += report.seconds
            combined.corpus_version = report.corpus_version
        return combined

    try:
        report = await asyncio.to_thread(run)
    except Exception as exc:
        return await store_failure(gateway, "ingest", exc)
    ingested = any(f.outcome in ("added", "updated", "unchanged") for f in report.files)
    # 207: some documents went in and some did not; 422: nothing usable was sent.
    status = 200 if not report.failed and ingested else 207 if ingested else 422
    return JSONResponse(report.to_dict(), status_code=status)


async def reindex_tenant(gateway: Gateway, request: Request) -> Response:
    """Rebuild the tenant's index from its stored chunks (re-embedded) and swap it in live."""
    try:
        tenant = admin_tenant(gateway, request)
        retrieval = retrieval_service(gateway)
    except GatewayError as error:
        return Response(error.body(), status_code=error.status, media_type="application/json")
    from gateway.retrieval.reindex import reindex

    try:
        result = await asyncio.to_thread(reindex, retrieval.store, retrieval.embedder, tenant)
    except Exception as exc:
        return await store_failure(gateway, "reindex", exc)
    return JSONResponse(
        {
            "tenant": tenant,
            "old_collection": result.old_collection,
            "new_collection": result.new_collection,
            "documents": result.documents,
            "chunks": result.chunks,
            "corpus_version": result.corpus_version,
            "seconds": result.seconds,
        }
    )


async def tenant_spend(gateway: Gateway, request: Request) -> Response:
    """Spend by day and model (settled costs) for the last `days` days (default 30)."""
    try:
        tenant = admin_tenant(gateway, request)
        raw_days = request.query_params.get("days", "30")
        if not raw_days.isdigit() or not 1 <= int(raw_days) <= 366:
            raise bad_request("days must be an integer from 1 to 366", param="days")
        state = gateway.services.state
        assert state is not None
        from gateway.state import StateUnavailable, spend_report

        try:
            report = await spend_report(state, tenant, int(raw_days))
        except StateUnavailable as exc:
            raise GatewayError(
                503, f"The state store is unreachable: {exc}", type="server_error", code="state_unavailable"
            ) from exc
    except GatewayError as error:
        return Response(error.body(), status_code=error.status, media_type="application/json")
    return JSONResponse(report)
