"""/v1/jobs against the real app and a real Postgres."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from infra.models import Job, JobPhase, JobStatus
from infra.storage import LocalStorage
from tests.service.helpers import FAKE_VIDEO, FakeClock, bearer, error_of, put_upload, submit

KeyMaker = Callable[[str], str]
IdOf = Callable[[str], uuid.UUID]


@pytest.fixture
def key_a(make_key: KeyMaker) -> str:
    return make_key("tenant-a")


@pytest.fixture
def key_b(make_key: KeyMaker) -> str:
    return make_key("tenant-b")


@pytest.fixture
def upload_a(key_a: str, tenant_id: IdOf, storage: LocalStorage) -> str:
    return put_upload(storage, tenant_id("tenant-a"))


def test_create_and_get_a_job(
    client: TestClient, key_a: str, upload_a: str, tenant_id: IdOf
) -> None:
    response = client.post(
        "/v1/jobs",
        json={
            "input": upload_a,
            "preset": "slow",
            "quality": 8,
            "gop": 12,
            "enhance": True,
            "priority": -5,
            "output_prefix": "../../../etc/passwd",
            "metadata": {"customer": "x", "n": [1, 2]},
            "callback_url": "https://example.com/hook",
        },
        headers=bearer(key_a),
    )
    assert response.status_code == 201, response.text
    job = response.json()
    tid = tenant_id("tenant-a")
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["phase"] is None and job["progress_percent"] == 0
    assert job["input"] == upload_a
    assert (job["preset"], job["quality"], job["gop"], job["enhance"], job["priority"]) == (
        "slow",
        8,
        12,
        True,
        -5,
    )
    # the user's output_prefix is a label only; the storage prefix is built from ids
    assert job["output_prefix"] == f"tenants/{tid}/jobs/{job['id']}/"
    assert job["output_label"] == "../../../etc/passwd"
    assert job["metadata"] == {"customer": "x", "n": [1, 2]}
    assert job["callback_url"] == "https://example.com/hook"

    fetched = client.get(f"/v1/jobs/{job['id']}", headers={"X-API-Key": key_a})
    assert fetched.status_code == 200
    assert fetched.json() == job


def test_progress_phase_and_error_come_from_the_row(
    client: TestClient, key_a: str, upload_a: str, session_factory: sessionmaker[Session]
) -> None:
    job = submit(client, key_a, input=upload_a)
    with session_factory() as session:
        session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(job["id"]))
            .values(
                status=JobStatus.failed,
                phase=JobPhase.encoding,
                gops_total=8,
                gops_done=3,
                attempts=2,
                error_code="input_corrupt",
                error_message="the stream is damaged",
            )
        )
        session.commit()
    got = client.get(f"/v1/jobs/{job['id']}", headers=bearer(key_a)).json()
    assert got["status"] == "failed" and got["phase"] is None  # an ended job is in no phase
    assert got["progress_percent"] == 37.5 and got["attempts"] == 2
    assert got["error"] == {"code": "input_corrupt", "message": "the stream is damaged"}


@pytest.mark.parametrize(
    ("patch", "field", "hint"),
    [
        ({"preset": "medium"}, "preset", "'fast' or 'slow'"),
        ({"priority": 51}, "priority", "less than or equal to 50"),
        ({"priority": -51}, "priority", "greater than or equal to -50"),
        ({"quality": 0}, "quality", "greater than or equal to 1"),
        ({"gop": 601}, "gop", "less than or equal to 600"),
        ({"callback_url": "ftp://example.com/x"}, "callback_url", "http"),
        ({"colour": "blue"}, "colour", "Extra inputs are not permitted"),
        ({"input": None}, "input", "valid string"),
    ],
)
def test_validation_errors_name_the_field_and_the_fix(
    client: TestClient, key_a: str, upload_a: str, patch: dict[str, object], field: str, hint: str
) -> None:
    response = client.post("/v1/jobs", json={"input": upload_a, **patch}, headers=bearer(key_a))
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "validation_error"
    assert error["message"].startswith(f"{field}: ") and hint in error["message"], error
    assert error["details"][0]["field"] == field


def test_missing_input_and_malformed_json(client: TestClient, key_a: str) -> None:
    missing = client.post("/v1/jobs", json={"preset": "fast"}, headers=bearer(key_a))
    assert missing.status_code == 422
    assert error_of(missing)["message"] == "input: is required"

    malformed = client.post(
        "/v1/jobs",
        content=b'{"input": "x", "preset": ',
        headers={**bearer(key_a), "Content-Type": "application/json"},
    )
    assert malformed.status_code == 400
    error = error_of(malformed)
    assert error["code"] == "malformed_json" and "not valid JSON" in error["message"]


def test_metadata_and_body_size_limits(client: TestClient, key_a: str, upload_a: str) -> None:
    big_metadata = client.post(
        "/v1/jobs",
        json={"input": upload_a, "metadata": {"blob": "x" * 2000}},
        headers=bearer(key_a),
    )
    assert big_metadata.status_code == 422
    assert "metadata is" in error_of(big_metadata)["message"]

    huge = json.dumps({"input": upload_a, "metadata": {"blob": "x" * 20_000}}).encode()
    too_large = client.post(
        "/v1/jobs", content=huge, headers={**bearer(key_a), "Content-Type": "application/json"}
    )
    assert too_large.status_code == 413
    assert error_of(too_large)["code"] == "body_too_large"

    def chunks() -> object:  # no Content-Length: counted while it streams
        for _ in range(40):
            yield b" " * 1024

    streamed = client.post(
        "/v1/jobs", content=chunks(), headers={**bearer(key_a), "Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
    assert "16384 bytes" in error_of(streamed)["message"]


def test_auth_is_required_and_checked(client: TestClient, key_a: str, upload_a: str) -> None:
    missing = client.get("/v1/jobs")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer" in error_of(missing)["message"]
    wrong = client.get("/v1/jobs", headers=bearer(key_a[:-3] + "xyz"))
    assert wrong.status_code == 401 and error_of(wrong)["code"] == "unauthorized"
    assert client.get("/v1/jobs", headers={"Authorization": f"Basic {key_a}"}).status_code == 401
    assert client.get("/v1/jobs", headers={"X-API-Key": key_a}).status_code == 200


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda other_upload, root: other_upload, "not under your area"),
        (lambda other_upload, root: "tenants/x/../../etc/passwd", "'..'"),
        (lambda other_upload, root: f"s3://splatpack/{other_upload}", "not under your area"),
        (
            lambda other_upload, root: "s3://someone-elses-bucket/video.mp4",
            "not an allowed input bucket",
        ),
        (lambda other_upload, root: "http://example.com/video.mp4", "unsupported scheme"),
        (lambda other_upload, root: f"{root}/../outside.mp4", "contains '..'"),
        (lambda other_upload, root: "/etc/passwd", "not under an allowed input root"),
        (lambda other_upload, root: f"{root}/missing.mp4", "does not exist"),
        (lambda other_upload, root: f"{root}/escape.mp4", "resolves (through a symlink) outside"),
        (lambda other_upload, root: f"{root}/subdir", "not a regular file"),
        (lambda other_upload, root: f"file://{root}/../outside.mp4", "contains '..'"),
    ],
)
def test_inputs_are_confined(
    client: TestClient,
    key_a: str,
    make_key: KeyMaker,
    tenant_id: IdOf,
    storage: LocalStorage,
    input_root: Path,
    tmp_path: Path,
    make_input: Callable[[str, Path], str],
    message: str,
) -> None:
    make_key("tenant-b")
    other_upload = put_upload(storage, tenant_id("tenant-b"))
    (tmp_path / "outside.mp4").write_bytes(FAKE_VIDEO)
    (input_root / "escape.mp4").symlink_to(tmp_path / "outside.mp4")
    (input_root / "subdir").mkdir()
    response = client.post(
        "/v1/jobs", json={"input": make_input(other_upload, input_root)}, headers=bearer(key_a)
    )
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "invalid_input" and message in error["message"], error


def test_accepted_input_forms(
    client: TestClient, key_a: str, upload_a: str, input_root: Path, tmp_path: Path
) -> None:
    (input_root / "cams").mkdir()
    (input_root / "cams" / "a.mp4").write_bytes(FAKE_VIDEO)
    (input_root / "link.mp4").symlink_to(input_root / "cams" / "a.mp4")  # stays inside the root
    expected_file = (input_root / "cams" / "a.mp4").resolve().as_uri()
    cases = {
        upload_a: upload_a,
        f"s3://splatpack/{upload_a}": upload_a,
        "s3://partner-bucket/videos/in.mp4": "s3://partner-bucket/videos/in.mp4",
        str(input_root / "cams" / "a.mp4"): expected_file,
        (input_root / "cams" / "a.mp4").as_uri(): expected_file,
        str(input_root / "link.mp4"): expected_file,
    }
    for given, stored in cases.items():
        assert submit(client, key_a, input=given)["input"] == stored, given
    missing = client.post(
        "/v1/jobs", json={"input": upload_a.replace("clip", "nope")}, headers=bearer(key_a)
    )
    assert missing.status_code == 422 and "POST /v1/uploads" in error_of(missing)["message"]


def test_idempotency_key_per_tenant(
    client: TestClient,
    key_a: str,
    key_b: str,
    upload_a: str,
    tenant_id: IdOf,
    storage: LocalStorage,
) -> None:
    upload_b = put_upload(storage, tenant_id("tenant-b"))
    first = client.post(
        "/v1/jobs", json={"input": upload_a}, headers={**bearer(key_a), "Idempotency-Key": "k-1"}
    )
    again = client.post(  # the same request: defaults spelled out do not make it another one
        "/v1/jobs",
        json={"quality": 5, "input": upload_a},
        headers={**bearer(key_a), "Idempotency-Key": "k-1"},
    )
    other = client.post(
        "/v1/jobs", json={"input": upload_b}, headers={**bearer(key_b), "Idempotency-Key": "k-1"}
    )
    fresh = client.post(
        "/v1/jobs", json={"input": upload_a}, headers={**bearer(key_a), "Idempotency-Key": "k-2"}
    )
    assert (first.status_code, again.status_code, other.status_code, fresh.status_code) == (
        201,
        200,
        201,
        201,
    )
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["quality"] == 5  # the first job, unchanged
    assert len({first.json()["id"], other.json()["id"], fresh.json()["id"]}) == 3
    too_long = client.post(
        "/v1/jobs",
        json={"input": upload_a},
        headers={**bearer(key_a), "Idempotency-Key": "k" * 201},
    )
    assert too_long.status_code == 422


def test_other_tenants_jobs_are_404(
    client: TestClient,
    key_a: str,
    key_b: str,
    upload_a: str,
    session_factory: sessionmaker[Session],
) -> None:
    job = submit(client, key_a, input=upload_a)
    for method, path in [
        ("GET", f"/v1/jobs/{job['id']}"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("GET", f"/v1/jobs/{job['id']}/outputs"),
        ("GET", f"/v1/jobs/{job['id']}/outputs/video"),
        ("GET", f"/v1/jobs/{uuid.uuid4()}"),
    ]:
        response = client.request(method, path, headers=bearer(key_b))
        assert response.status_code == 404, (method, path, response.text)
        assert error_of(response)["code"] == "not_found"
    assert client.get("/v1/jobs", headers=bearer(key_b)).json()["items"] == []
    with session_factory() as session:  # B's cancel attempt changed nothing
        assert session.get(Job, uuid.UUID(job["id"])).status == JobStatus.queued  # type: ignore[union-attr]


def test_pagination_walks_every_job_once_newest_first(
    client: TestClient,
    key_a: str,
    key_b: str,
    upload_a: str,
    tenant_id: IdOf,
    storage: LocalStorage,
) -> None:
    created = [submit(client, key_a, input=upload_a, priority=i % 3)["id"] for i in range(7)]
    submit(client, key_b, input=put_upload(storage, tenant_id("tenant-b")))
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/jobs", params=params, headers=bearer(key_a)).json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(created))  # newest first, no duplicates, none missing
    bad = client.get("/v1/jobs", params={"cursor": "not-a-cursor"}, headers=bearer(key_a))
    assert bad.status_code == 400 and error_of(bad)["code"] == "invalid_cursor"
    assert client.get("/v1/jobs", params={"limit": 0}, headers=bearer(key_a)).status_code == 422


def test_pagination_with_equal_timestamps(
    client: TestClient, key_a: str, tenant_id: IdOf, session_factory: sessionmaker[Session]
) -> None:
    """Jobs made in one transaction share created_at: the id breaks the tie."""
    from infra.jobs import create_job

    with session_factory() as session:
        ids = {str(create_job(session, tenant_id("tenant-a"), input_uri="x").id) for _ in range(5)}
        session.commit()
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params, headers=bearer(key_a)).json()
        seen += [item["id"] for item in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5


def test_list_filters_by_status_and_batch(
    client: TestClient, key_a: str, upload_a: str, session_factory: sessionmaker[Session]
) -> None:
    jobs = [submit(client, key_a, input=upload_a)["id"] for _ in range(3)]
    client.post(f"/v1/jobs/{jobs[0]}/cancel", headers=bearer(key_a))
    canceled = client.get("/v1/jobs", params={"status": "canceled"}, headers=bearer(key_a)).json()
    assert [j["id"] for j in canceled["items"]] == [jobs[0]]
    queued = client.get("/v1/jobs", params={"status": "queued"}, headers=bearer(key_a)).json()
    assert {j["id"] for j in queued["items"]} == set(jobs[1:])
    bad = client.get("/v1/jobs", params={"status": "done"}, headers=bearer(key_a))
    assert bad.status_code == 422 and "status" in error_of(bad)["message"]
    batch = client.post(
        "/v1/batches", json={"inputs": [upload_a, upload_a]}, headers=bearer(key_a)
    ).json()
    in_batch = client.get(
        "/v1/jobs", params={"batch_id": batch["id"]}, headers=bearer(key_a)
    ).json()
    assert len(in_batch["items"]) == 2
    assert all(j["batch_id"] == batch["id"] for j in in_batch["items"])


def test_cancel_transitions(
    client: TestClient,
    key_a: str,
    upload_a: str,
    session_factory: sessionmaker[Session],
    clock: FakeClock,
) -> None:
    queued, running, finished = (submit(client, key_a, input=upload_a)["id"] for _ in range(3))
    with session_factory() as session:
        session.execute(
            update(Job).where(Job.id == uuid.UUID(running)).values(status=JobStatus.running)
        )
        session.execute(
            update(Job).where(Job.id == uuid.UUID(finished)).values(status=JobStatus.succeeded)
        )
        session.commit()

    now_canceled = client.post(f"/v1/jobs/{queued}/cancel", headers=bearer(key_a))
    assert now_canceled.status_code == 200
    body = now_canceled.json()
    assert body["status"] == "canceled" and body["finished_at"].startswith("2030-01-01T12:00")

    requested = client.post(f"/v1/jobs/{running}/cancel", headers=bearer(key_a))
    assert requested.status_code == 202
    assert requested.json()["status"] == "running" and requested.json()["cancel_requested"] is True

    for job_id, state in ((finished, "succeeded"), (queued, "canceled")):
        conflict = client.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(key_a))
        assert conflict.status_code == 409
        assert (
            error_of(conflict)["code"] == "job_finished" and state in error_of(conflict)["message"]
        )
    with session_factory() as session:
        statuses = dict(session.execute(select(Job.id, Job.status)).all())
    assert statuses[uuid.UUID(running)] == JobStatus.running


def test_outputs_links_and_download(
    client: TestClient,
    key_a: str,
    upload_a: str,
    storage: LocalStorage,
    session_factory: sessionmaker[Session],
) -> None:
    job = submit(client, key_a, input=upload_a)
    not_yet = client.get(f"/v1/jobs/{job['id']}/outputs", headers=bearer(key_a))
    assert not_yet.status_code == 409 and "queued" in error_of(not_yet)["message"]

    prefix = job["output_prefix"]
    storage.put_bytes(prefix + "video.gsv", b"GSV-bytes")
    storage.put_bytes(prefix + "report.json", b'{"psnr_db": 30}')
    storage.put_bytes("elsewhere/secret.txt", b"secret")
    with session_factory() as session:
        session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(job["id"]))
            .values(
                status=JobStatus.succeeded,
                outputs={
                    "video": prefix + "video.gsv",
                    "report": prefix + "report.json",
                    "sneaky": "elsewhere/secret.txt",
                },
            )
        )
        session.commit()

    listing = client.get(f"/v1/jobs/{job['id']}/outputs", headers=bearer(key_a))
    assert listing.status_code == 404  # an output outside the job's prefix is never served
    with session_factory() as session:
        row = session.get(Job, uuid.UUID(job["id"]))
        assert row is not None
        row.outputs = {k: v for k, v in row.outputs.items() if k != "sneaky"}
        session.commit()

    links = client.get(f"/v1/jobs/{job['id']}/outputs", headers=bearer(key_a)).json()
    assert [(o["name"], o["expires_in_s"]) for o in links["outputs"]] == [
        ("report", None),
        ("video", None),
    ]
    video_url = links["outputs"][1]["url"]
    assert video_url == f"http://testserver/v1/jobs/{job['id']}/outputs/video"
    download = client.get(video_url, headers=bearer(key_a))
    assert download.status_code == 200 and download.content == b"GSV-bytes"
    assert 'filename="video.gsv"' in download.headers["content-disposition"]
    assert client.get(video_url).status_code == 401
    assert (
        client.get(f"/v1/jobs/{job['id']}/outputs/nope", headers=bearer(key_a)).status_code == 404
    )
