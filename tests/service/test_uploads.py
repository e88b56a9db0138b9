"""/v1/uploads: streaming multipart into storage with a size limit; presigned PUTs with S3."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from infra.settings import Settings
from infra.storage import LocalStorage, S3Storage
from service.app import create_app
from tests.service.helpers import FakeClock, bearer, error_of, submit


def test_upload_streams_to_storage_and_is_a_job_input(
    client: TestClient,
    make_key: Callable[[str], str],
    tenant_id: Callable[[str], object],
    storage: LocalStorage,
) -> None:
    key = make_key("acme")
    data = bytes(range(256)) * 100  # 25.6 kB, several chunks
    response = client.post(
        "/v1/uploads",
        files={"file": ("../../My Clip.MP4", data, "video/mp4")},
        data={"note": "ignored"},
        headers=bearer(key),
    )
    assert response.status_code == 201, response.text
    upload = response.json()
    assert upload["size_bytes"] == len(data)
    assert upload["sha256"] == hashlib.sha256(data).hexdigest()
    assert upload["filename"] == "My Clip.MP4"
    # the key is built from ids (plus a known extension), never from the user's file name
    assert upload["key"].startswith(f"tenants/{tenant_id('acme')}/uploads/")
    assert upload["key"].endswith(".mp4") and "Clip" not in upload["key"]
    assert storage.get_bytes(upload["key"]) == data
    assert submit(client, key, input=upload["key"])["input"] == upload["key"]


def test_upload_limits_and_bad_requests(
    client: TestClient, make_key: Callable[[str], str], storage: LocalStorage, settings: Settings
) -> None:
    key = make_key("acme")
    too_big = b"x" * (settings.max_upload_bytes + 1)
    response = client.post("/v1/uploads", files={"file": ("a.mp4", too_big)}, headers=bearer(key))
    assert response.status_code == 413
    assert error_of(response)["code"] == "body_too_large"
    assert str(settings.max_upload_bytes) in error_of(response)["message"]
    far_too_big = b"x" * (settings.max_upload_bytes + 100 * 1024)  # refused on Content-Length
    assert (
        client.post(
            "/v1/uploads", files={"file": ("a.mp4", far_too_big)}, headers=bearer(key)
        ).status_code
        == 413
    )
    assert storage.list_keys("tenants/") == []
    assert list((settings.data_dir / "tmp").iterdir()) == []  # no temp files left behind

    no_field = client.post("/v1/uploads", files={"video": ("a.mp4", b"abc")}, headers=bearer(key))
    assert no_field.status_code == 422 and "'file'" in error_of(no_field)["message"]
    empty = client.post("/v1/uploads", files={"file": ("a.mp4", b"")}, headers=bearer(key))
    assert empty.status_code == 422 and "empty" in error_of(empty)["message"]
    raw = client.post(
        "/v1/uploads", content=b"abc", headers={**bearer(key), "Content-Type": "video/mp4"}
    )
    assert raw.status_code == 415 and "multipart/form-data" in error_of(raw)["message"]
    assert client.post("/v1/uploads", files={"file": ("a.mp4", b"abc")}).status_code == 401


def test_presign_needs_s3(client: TestClient, make_key: Callable[[str], str]) -> None:
    response = client.post(
        "/v1/uploads/presign", json={"filename": "a.mp4"}, headers=bearer(make_key("acme"))
    )
    assert response.status_code == 409
    assert "POST the file to /v1/uploads" in error_of(response)["message"]


def test_presigned_put_with_s3(
    s3_endpoint: str,
    s3_bucket: str,
    settings: Settings,
    session_factory: sessionmaker[Session],
    make_key: Callable[[str], str],
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    s3_settings = settings.model_copy(
        update={"storage_backend": "s3", "s3_bucket": s3_bucket, "s3_endpoint_url": s3_endpoint}
    )
    storage = S3Storage(s3_bucket, endpoint_url=s3_endpoint, create_bucket=True)
    app = create_app(s3_settings, session_factory=session_factory, storage=storage, clock=clock)
    key = make_key("acme")
    with TestClient(app) as client:
        presigned = client.post(
            "/v1/uploads/presign", json={"filename": "cam.mov"}, headers=bearer(key)
        )
        assert presigned.status_code == 201, presigned.text
        body = presigned.json()
        assert body["method"] == "PUT" and body["key"].endswith(".mov")
        put = httpx.put(body["url"], content=b"movie-bytes")
        assert put.status_code == 200, put.text
        assert storage.get_bytes(body["key"]) == b"movie-bytes"
        job = submit(client, key, input=f"s3://{s3_bucket}/{body['key']}")
        assert job["input"] == body["key"]


def test_presigned_uploads_are_bounded_by_the_upload_limit(
    s3_endpoint: str,
    s3_bucket: str,
    settings: Settings,
    session_factory: sessionmaker[Session],
    make_key: Callable[[str], str],
    clock: FakeClock,
) -> None:
    """A declared size over the limit is refused at presign; an undeclared one is refused when
    a job names the object (the presigned PUT never passed the API's streaming limit)."""
    s3_settings = settings.model_copy(
        update={"storage_backend": "s3", "s3_bucket": s3_bucket, "s3_endpoint_url": s3_endpoint}
    )
    storage = S3Storage(s3_bucket, endpoint_url=s3_endpoint, create_bucket=True)
    app = create_app(s3_settings, session_factory=session_factory, storage=storage, clock=clock)
    key = make_key("acme")
    limit = settings.max_upload_bytes
    with TestClient(app) as client:
        declared = client.post(
            "/v1/uploads/presign", json={"filename": "a.mp4", "size_bytes": 11}, headers=bearer(key)
        )
        assert declared.status_code == 201, declared.text
        assert declared.json()["max_bytes"] == limit
        assert "content-length" in declared.json()["url"].lower()  # the length is signed
        assert httpx.put(declared.json()["url"], content=b"movie-bytes").status_code == 200

        over = client.post(
            "/v1/uploads/presign", json={"size_bytes": limit + 1}, headers=bearer(key)
        )
        assert over.status_code == 413 and str(limit) in error_of(over)["message"]

        undeclared = client.post("/v1/uploads/presign", json={}, headers=bearer(key)).json()
        assert httpx.put(undeclared["url"], content=b"x" * (limit + 1)).status_code == 200
        refused = client.post("/v1/jobs", json={"input": undeclared["key"]}, headers=bearer(key))
        assert refused.status_code == 422
        assert "over the upload limit" in error_of(refused)["message"]
        assert submit(client, key, input=declared.json()["key"])["input"] == declared.json()["key"]
