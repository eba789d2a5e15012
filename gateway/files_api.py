"""OpenAI's Files API on the tenant's own storage: `POST /v1/files` (multipart), `GET /v1/files`,
`GET /v1/files/{id}`, `GET /v1/files/{id}/content`, `DELETE /v1/files/{id}`.

Authenticated by the tenant's API key like every /v1 route; a tenant sees only its own files
(another tenant's id is a 404, as an unknown one). Accepted: `purpose` `assistants` or
`user_data` (files kept for retrieval), any format the ingest path reads, up to `files.max_bytes`.
Everything else is a 400 or 413 in OpenAI's error envelope saying what to change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.types import Message

from gateway.api_routes import PolicyOf, answer, list_page, page_query
from gateway.errors import GatewayError, bad_request
from gateway.files import FileStore, StoredFile
from gateway.retrieval.formats import detect_kind

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.policy import Policy

PURPOSES = ("assistants", "user_data")
OPENAI_ONLY_PURPOSES = ("batch", "fine-tune", "vision", "evals")
MULTIPART_SLACK = 64 * 1024  # boundaries and the other fields around the file's bytes
EXPIRY_RANGE_S = (3600, 2_592_000)  # OpenAI's bounds for expires_after.seconds
MAX_LIST = 10_000
ACCEPTED = "Markdown, text, HTML, PDF, images (OCR), CSV/TSV, XLSX, DOCX, PPTX, JSON/YAML/XML and source code"


def not_found(file_id: str) -> GatewayError:
    return GatewayError(404, f"No such File object: {file_id}", code="file_not_found", param="file_id")


def too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"The file is larger than this gateway accepts ({limit} bytes, files.max_bytes in gateway.yaml).",
        code="file_too_large",
        param="file",
    )


class FilesAPI:
    def __init__(self, store: FileStore, max_bytes: int, policy_of: PolicyOf) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self._policy_of = policy_of  # the tenant a request's API key belongs to, or a 401

    # -- routes -----------------------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        async def handle(policy: Policy) -> Response:
            limit = self.max_bytes
            length = request.headers.get("content-length", "")
            if length.isdigit() and int(length) > limit + MULTIPART_SLACK:
                raise too_large(limit)
            upload, purpose, expires_after_s = await self._read_form(request, limit)
            try:
                stored = await asyncio.to_thread(
                    self.store.save,
                    policy.tenant,
                    upload.filename or "",
                    purpose,
                    upload.file,
                    expires_after_s,
                )
            finally:
                await upload.close()
            return JSONResponse(stored.to_openai())

        return await answer(request, self._policy_of, handle, counted=True)

    async def list(self, request: Request) -> Response:
        async def handle(policy: Policy) -> Response:
            query = request.query_params
            order, limit = page_query(query, MAX_LIST, MAX_LIST)
            files = await asyncio.to_thread(
                self.store.list,
                policy.tenant,
                query.get("purpose"),
                order,  # type: ignore[arg-type]
                query.get("after"),
            )
            return JSONResponse(list_page([f.to_openai() for f in files[:limit]], len(files) > limit))

        return await answer(request, self._policy_of, handle)

    async def retrieve(self, request: Request) -> Response:
        async def handle(policy: Policy) -> Response:
            return JSONResponse((await self._existing(policy, request)).to_openai())

        return await answer(request, self._policy_of, handle)

    async def content(self, request: Request) -> Response:
        async def handle(policy: Policy) -> Response:
            file_id = request.path_params["file_id"]
            path = await asyncio.to_thread(self.store.content_path, policy.tenant, file_id)
            if path is None:
                raise not_found(file_id)
            return FileResponse(path, media_type="application/octet-stream")

        return await answer(request, self._policy_of, handle)

    async def delete(self, request: Request) -> Response:
        async def handle(policy: Policy) -> Response:
            file_id = request.path_params["file_id"]
            if not await asyncio.to_thread(self.store.delete, policy.tenant, file_id):
                raise not_found(file_id)
            return JSONResponse({"id": file_id, "object": "file", "deleted": True})

        return await answer(request, self._policy_of, handle)

    # -- helpers ----------------------------------------------------------------------------------

    async def _existing(self, policy: Policy, request: Request) -> StoredFile:
        file_id = request.path_params["file_id"]
        stored = await asyncio.to_thread(self.store.get, policy.tenant, file_id)
        if stored is None:
            raise not_found(file_id)
        return stored

    async def _read_form(self, request: Request, limit: int) -> tuple[UploadFile, str, int | None]:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise bad_request(
                "Upload the file as multipart/form-data with the fields `file` and `purpose`.", param="file"
            )
        try:
            form = await Request(request.scope, _capped(request.receive, limit + MULTIPART_SLACK)).form(
                max_files=1, max_fields=16
            )
        except HTTPException as exc:  # a malformed body, or more than one file
            raise bad_request(f"The multipart body could not be read: {exc.detail}", param="file") from exc
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise bad_request(
                "The `file` field is missing: attach the file itself, not its name.", param="file"
            )
        if upload.size is not None and upload.size > limit:
            await upload.close()
            raise too_large(limit)
        try:
            purpose = _purpose(form.get("purpose"))
            _accepted_type(upload.filename)
            expires_after_s = _expiry(form.get("expires_after[anchor]"), form.get("expires_after[seconds]"))
        except GatewayError:
            await upload.close()
            raise
        return upload, purpose, expires_after_s


def _capped(receive: Callable[[], Awaitable[Message]], cap: int) -> Callable[[], Awaitable[Message]]:
    """The request's receive, failing with 413 once more than `cap` bytes arrived (a body with no
    or a false Content-Length)."""
    received = 0

    async def capped() -> Message:
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > cap:
            raise too_large(cap - MULTIPART_SLACK)
        return message

    return capped


def _purpose(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise bad_request(f"`purpose` is required: one of {', '.join(PURPOSES)}.", param="purpose")
    if value in PURPOSES:
        return value
    if value in OPENAI_ONLY_PURPOSES:
        raise bad_request(
            f"purpose {value!r} is not served here: this gateway keeps files for retrieval "
            f"(file_search, vector stores). Use one of {', '.join(PURPOSES)}.",
            param="purpose",
        )
    raise bad_request(f"Unknown purpose {value!r}: use one of {', '.join(PURPOSES)}.", param="purpose")


def _accepted_type(filename: str | None) -> None:
    name = filename or ""
    if not name:
        raise bad_request("The file has no name: send it with a file name and extension.", param="file")
    if detect_kind(name) is None:
        suffix = PurePosixPath(name).suffix or "(no extension)"
        raise GatewayError(
            400,
            f"Files of type {suffix} ({name}) cannot be searched, so they are not accepted. "
            f"Accepted: {ACCEPTED}.",
            code="unsupported_file",
            param="file",
        )


def _expiry(anchor: Any, seconds: Any) -> int | None:
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise bad_request("expires_after.anchor must be 'created_at'.", param="expires_after.anchor")
    low, high = EXPIRY_RANGE_S
    if not isinstance(seconds, str) or not seconds.isdigit() or not low <= int(seconds) <= high:
        raise bad_request(
            f"expires_after.seconds must be an integer from {low} to {high}.", param="expires_after.seconds"
        )
    return int(seconds)


def install(gateway: Gateway) -> FilesAPI:
    """The Files API of this gateway, with its store under `files.dir`."""
    config = gateway.config
    return FilesAPI(
        FileStore(config.resolve(config.files.dir)), config.files.max_bytes, gateway.caller_policy
    )
