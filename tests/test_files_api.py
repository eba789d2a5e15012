"""OpenAI's Files API on the tenant's own storage, through the official openai SDK and raw HTTP:
upload, list, retrieve, content, delete; tenants isolated; every bad upload a clear 400 or 413 in
OpenAI's envelope; answers validated against OpenAI's OpenAPI description."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import (
    ACME_KEY,
    OTHER_KEY,
    UPSTREAM_SECRET,
    MockServer,
    RunningGateway,
    gateway_with,
)
from tests.contract import check

SMALL_LIMIT = 4096

NOTES = b"# Parking\n\nA resident parking permit costs 30 EUR a year.\n"


def sdk(gateway: RunningGateway, key: str = ACME_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def upload(
    gateway: RunningGateway, name: str, data: bytes, purpose: str = "assistants", **extra: str
) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/files",
        headers={"Authorization": f"Bearer {ACME_KEY}"},
        files={"file": (name, data, "application/octet-stream")},
        data={"purpose": purpose, **extra},
        timeout=30,
    )


def test_upload_list_retrieve_content_and_delete_with_the_sdk(gateway: RunningGateway) -> None:
    client = sdk(gateway)
    created = client.files.create(file=("parking.md", NOTES, "text/markdown"), purpose="assistants")
    assert created.id.startswith("file-") and created.object == "file"
    assert (created.filename, created.bytes, created.purpose) == ("parking.md", len(NOTES), "assistants")
    second = client.files.create(file=("rates.csv", b"zone,eur\nA,30\nB,45\n"), purpose="user_data")
    listed = client.files.list()
    assert [f.id for f in listed.data] == [second.id, created.id]  # newest first, as OpenAI lists
    assert [f.id for f in client.files.list(purpose="user_data").data] == [second.id]
    assert [f.id for f in client.files.list(order="asc", limit=1).data] == [created.id]
    assert client.files.retrieve(created.id).filename == "parking.md"
    assert client.files.content(created.id).read() == NOTES
    deleted = client.files.delete(created.id)
    assert deleted.deleted is True and deleted.id == created.id
    with pytest.raises(openai.NotFoundError) as missing:
        client.files.retrieve(created.id)
    assert created.id in str(missing.value)
    assert [f.id for f in client.files.list().data] == [second.id]


def test_answers_follow_openais_schemas(gateway: RunningGateway) -> None:
    headers = {"Authorization": f"Bearer {ACME_KEY}"}
    created = upload(gateway, "parking.md", NOTES)
    assert created.status_code == 200, created.text
    check(created.json(), "OpenAIFile")
    file_id = created.json()["id"]
    check(httpx.get(f"{gateway.url}/v1/files", headers=headers).json(), "ListFilesResponse")
    check(httpx.get(f"{gateway.url}/v1/files/{file_id}", headers=headers).json(), "OpenAIFile")
    check(httpx.delete(f"{gateway.url}/v1/files/{file_id}", headers=headers).json(), "DeleteFileResponse")


def test_another_tenants_file_is_not_found(gateway: RunningGateway) -> None:
    created = sdk(gateway).files.create(file=("parking.md", NOTES), purpose="assistants")
    other = sdk(gateway, OTHER_KEY)
    assert other.files.list().data == []
    for call in (other.files.retrieve, other.files.content, other.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(created.id)
    assert sdk(gateway).files.content(created.id).read() == NOTES  # untouched


def test_expiring_files_carry_their_expiry(gateway: RunningGateway) -> None:
    response = upload(
        gateway,
        "parking.md",
        NOTES,
        **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["expires_at"] == body["created_at"] + 3600


@pytest.mark.parametrize(
    ("name", "data", "fields", "status", "param", "says"),
    [
        ("tool.exe", b"MZ\x90\x00", {"purpose": "assistants"}, 400, "file", "Files of type .exe"),
        ("parking.md", NOTES, {"purpose": "fine-tune"}, 400, "purpose", "not served here"),
        ("parking.md", NOTES, {"purpose": "everything"}, 400, "purpose", "Unknown purpose"),
        ("parking.md", NOTES, {}, 400, "purpose", "`purpose` is required"),
        (
            "parking.md",
            NOTES,
            {"purpose": "assistants", "expires_after[anchor]": "created_at", "expires_after[seconds]": "60"},
            400,
            "expires_after.seconds",
            "from 3600 to 2592000",
        ),
    ],
)
def test_bad_uploads_say_what_to_change(
    gateway: RunningGateway,
    name: str,
    data: bytes,
    fields: dict[str, str],
    status: int,
    param: str,
    says: str,
) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/files",
        headers={"Authorization": f"Bearer {ACME_KEY}"},
        files={"file": (name, data)},
        data=fields,
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"] and error["type"] == "invalid_request_error"


def test_a_body_without_a_file_or_not_multipart_is_a_400(gateway: RunningGateway) -> None:
    headers = {"Authorization": f"Bearer {ACME_KEY}"}
    no_file = httpx.post(f"{gateway.url}/v1/files", headers=headers, files={"purpose": (None, "assistants")})
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    as_json = httpx.post(f"{gateway.url}/v1/files", headers=headers, json={"file": "parking.md"})
    assert as_json.status_code == 400 and "multipart/form-data" in as_json.json()["error"]["message"]
    unauthenticated = httpx.get(f"{gateway.url}/v1/files")
    assert unauthenticated.status_code == 401


@pytest.fixture
def small_files(
    tmp_path: Path, upstream: MockServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningGateway]:
    """A gateway whose files.max_bytes is 4 KB."""
    monkeypatch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
    with gateway_with(tmp_path, upstream, config={"files": {"max_bytes": SMALL_LIMIT}}) as running:
        yield running


def test_a_file_over_the_limit_is_a_413_and_nothing_is_kept(small_files: RunningGateway) -> None:
    at_limit = upload(small_files, "fits.txt", b"a" * SMALL_LIMIT)
    assert at_limit.status_code == 200, at_limit.text
    for data in (
        b"a" * (SMALL_LIMIT + 1),
        b"a" * (SMALL_LIMIT * 40),
    ):  # over the file limit, over the body cap
        response = upload(small_files, "big.txt", data)
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["code"] == "file_too_large" and str(SMALL_LIMIT) in error["message"]
    assert [f.filename for f in sdk(small_files).files.list().data] == ["fits.txt"]
