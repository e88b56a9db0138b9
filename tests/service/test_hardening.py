"""Every defect issue 11 found, as a request against the real app on a real Postgres.

Bodies that used to get a 500 (database integer overflow, NUL, NaN, lone surrogates,
a cron that never fires) now get a 422 naming the field; strings are not coerced into
numbers or booleans; an Idempotency-Key is bound to its request; links are built from
where the request came; the API has the resources a MediaConvert user looks for; and a
500, when one happens, tells the client the connection is closed. The last tests run
the app under a real uvicorn on a free loopback port.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from infra.models import Job, JobPhase, JobStatus, Schedule
from infra.settings import Settings
from infra.storage import LocalStorage, S3Storage
from service.app import create_app
from service.scheduler import tick
from tests.fixtures.s3 import free_port
from tests.service.helpers import FakeClock, bearer, error_of, put_upload, submit

KeyMaker = Callable[[str], str]
IdOf = Callable[[str], uuid.UUID]


@pytest.fixture
def key(make_key: KeyMaker) -> str:
    return make_key("acme")


@pytest.fixture
def upload(key: str, tenant_id: IdOf, storage: LocalStorage) -> str:
    return put_upload(storage, tenant_id("acme"))


@pytest.fixture
def app_without_public_url(
    settings: Settings,
    session_factory: sessionmaker[Session],
    storage: LocalStorage,
    clock: FakeClock,
) -> FastAPI:
    """The app with no configured public URL: links come from the request's own base URL."""
    return create_app(
        settings.model_copy(update={"public_base_url": ""}),
        session_factory=session_factory,
        storage=storage,
        clock=clock,
    )


def post_raw(client: TestClient, path: str, key: str, raw: str) -> httpx.Response:
    return client.post(
        path, content=raw.encode(), headers={**bearer(key), "Content-Type": "application/json"}
    )


# ------------------------------------------------------------------ 1. no 5xx


@pytest.mark.parametrize(
    ("template", "field"),
    [
        ('{"input": "UPLOAD", "max_frames": 2147483648}', "max_frames"),
        ('{"input": "UPLOAD", "max_frames": 9223372036854775808}', "max_frames"),
        ('{"input": "UPLOAD", "max_frames": 1000000000000000000000000000000}', "max_frames"),
        ('{"input": "UPLOAD", "metadata": {"k": "a\\u0000b"}}', "metadata.k"),
        ('{"input": "UPLOAD", "metadata": {"a\\u0000b": 1}}', "metadata"),
        ('{"input": "UPLOAD", "output_prefix": "x\\u0000y"}', "output_prefix"),
        ('{"input": "UPLOAD", "metadata": {"n": NaN}}', "metadata.n"),
        ('{"input": "UPLOAD", "metadata": {"n": -Infinity}}', "metadata.n"),
        ('{"input": "UPLOAD", "metadata": {"s": "\\ud800"}}', "metadata.s"),
        (
            '{"input": "UPLOAD", "metadata": {"deep": [[{"s": "\\udfff"}]]}}',
            "metadata.deep[0][0].s",
        ),
    ],
)
def test_bodies_that_gave_500_are_422_naming_the_field(
    client: TestClient, key: str, upload: str, template: str, field: str
) -> None:
    response = post_raw(client, "/v1/jobs", key, template.replace("UPLOAD", upload))
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["details"][0]["field"] == field, error
    assert field in error["message"]
    # the connection is fine and nothing was created
    assert client.get("/v1/jobs", headers=bearer(key)).json()["items"] == []


def test_batch_job_metadata_with_nul_is_422(client: TestClient, key: str, upload: str) -> None:
    raw = '{"inputs": ["UPLOAD"], "job": {"metadata": {"k": "\\u0000"}}}'.replace("UPLOAD", upload)
    response = post_raw(client, "/v1/batches", key, raw)
    assert response.status_code == 422, response.text
    assert error_of(response)["details"][0]["field"] == "job.metadata.k"


def test_cron_that_never_fires_is_422_and_a_stored_one_is_parked(
    client: TestClient,
    key: str,
    tenant_id: IdOf,
    session_factory: sessionmaker[Session],
    storage: LocalStorage,
    clock: FakeClock,
) -> None:
    prefix = f"tenants/{tenant_id('acme')}/in/"
    response = client.post(
        "/v1/schedules", json={"cron": "0 0 31 2 *", "input_prefix": prefix}, headers=bearer(key)
    )
    assert response.status_code == 422, response.text
    assert "never fires" in error_of(response)["message"]
    leap = client.post(
        "/v1/schedules", json={"cron": "0 0 29 2 *", "input_prefix": prefix}, headers=bearer(key)
    )
    assert leap.status_code == 201, leap.text

    # a schedule stored before crons were proven does not wedge the scheduler
    with session_factory.begin() as s:
        s.add(
            Schedule(
                tenant_id=tenant_id("acme"),
                cron="0 0 31 2 *",
                input_prefix=prefix,
                job_template={},
                next_run_at=datetime(2000, 1, 1, tzinfo=UTC),
            )
        )
    with session_factory() as s:
        tick(s, storage, clock())
    with session_factory() as s:
        parked = s.scalars(select(Schedule).where(Schedule.cron == "0 0 31 2 *")).one()
        assert parked.next_run_at.year == 9999


@pytest.mark.parametrize(
    "patch",
    [{"quality": "5"}, {"enhance": "yes"}, {"gop": "30"}, {"priority": True}, {"quality": 5.0}],
)
def test_strings_are_not_coerced_into_numbers_or_booleans(
    client: TestClient, key: str, upload: str, patch: dict[str, Any]
) -> None:
    response = client.post("/v1/jobs", json={"input": upload, **patch}, headers=bearer(key))
    assert response.status_code == 422, (patch, response.text)
    assert error_of(response)["details"][0]["field"] == next(iter(patch))


# ------------------------------------------------------------ 2. idempotency


def test_idempotency_key_is_bound_to_the_request(
    client: TestClient, key: str, upload: str, tenant_id: IdOf, storage: LocalStorage
) -> None:
    headers = {**bearer(key), "Idempotency-Key": "pay-1"}
    first = client.post("/v1/jobs", json={"input": upload}, headers=headers)
    assert first.status_code == 201
    for other in ({"input": upload, "quality": 9}, {"input": "/etc/passwd"}):
        reused = client.post("/v1/jobs", json=other, headers=headers)
        assert reused.status_code == 409, reused.text
        assert error_of(reused)["code"] == "idempotency_key_reused"
    replay = client.post("/v1/jobs", json={"input": upload}, headers=headers)
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    assert len(client.get("/v1/jobs", headers=bearer(key)).json()["items"]) == 1

    other_upload = put_upload(storage, tenant_id("acme"), "other.mp4")
    batch_headers = {**bearer(key), "Idempotency-Key": "batch-1"}
    made = client.post("/v1/batches", json={"inputs": [upload]}, headers=batch_headers)
    assert made.status_code == 201
    changed = client.post("/v1/batches", json={"inputs": [other_upload]}, headers=batch_headers)
    assert changed.status_code == 409 and error_of(changed)["code"] == "idempotency_key_reused"
    again = client.post("/v1/batches", json={"inputs": [upload]}, headers=batch_headers)
    assert again.status_code == 200 and again.json()["id"] == made.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"


# -------------------------------------------------------------------- 3. links


def _succeed(session_factory: sessionmaker[Session], job_id: str, storage: LocalStorage) -> None:
    with session_factory.begin() as s:
        job = s.get(Job, uuid.UUID(job_id))
        assert job is not None
        outputs = {"video": f"{job.output_prefix}video.gsv"}
        storage.put_bytes(outputs["video"], b"GSV")
        s.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(status=JobStatus.succeeded, outputs=outputs, phase=None)
        )


def test_output_links_use_the_requests_base_url(
    app_without_public_url: FastAPI,
    session_factory: sessionmaker[Session],
    storage: LocalStorage,
    key: str,
    upload: str,
) -> None:
    app = app_without_public_url
    with TestClient(app, base_url="http://127.0.0.1:8765") as client:
        job = submit(client, key, input=upload)
        _succeed(session_factory, job["id"], storage)
        links = client.get(f"/v1/jobs/{job['id']}/outputs", headers=bearer(key)).json()
    assert links["outputs"][0]["url"] == f"http://127.0.0.1:8765/v1/jobs/{job['id']}/outputs/video"


def test_presigned_urls_use_the_public_s3_endpoint(s3_endpoint: str, s3_bucket: str) -> None:
    port = s3_endpoint.rsplit(":", 1)[1]
    public = f"http://localhost:{port}"  # another name for the same loopback server
    storage = S3Storage(
        s3_bucket, endpoint_url=s3_endpoint, create_bucket=True, public_endpoint_url=public
    )
    storage.put_bytes("tenants/x/a.bin", b"hello")
    url = storage.presign_get("tenants/x/a.bin", 60)
    assert url is not None and url.startswith(f"{public}/{s3_bucket}/tenants/x/a.bin?")
    assert httpx.get(url).content == b"hello"
    put_url = storage.presign_put("tenants/x/b.bin", 60)
    assert put_url is not None and put_url.startswith(public)


# --------------------------------------------------------- 5. completeness


def test_me_batches_list_and_job_deletion(
    client: TestClient,
    key: str,
    upload: str,
    tenant_id: IdOf,
    make_key: KeyMaker,
    session_factory: sessionmaker[Session],
    storage: LocalStorage,
) -> None:
    assert client.get("/v1/me").status_code == 401
    me = client.get("/v1/me", headers=bearer(key)).json()
    assert me["tenant_id"] == str(tenant_id("acme")) and me["tenant_name"] == "acme"
    assert me["storage_prefix"] == f"tenants/{tenant_id('acme')}/"
    assert me["storage_uri"] is None  # local storage
    assert me["limits"]["max_batch_inputs"] == 5

    made = [
        client.post("/v1/batches", json={"inputs": [upload]}, headers=bearer(key)).json()["id"]
        for _ in range(3)
    ]
    page = client.get("/v1/batches?limit=2", headers=bearer(key)).json()
    rest = client.get(f"/v1/batches?cursor={page['next_cursor']}", headers=bearer(key)).json()
    assert [b["id"] for b in page["items"] + rest["items"]] == made[::-1]
    assert rest["next_cursor"] is None and page["items"][0]["total_jobs"] == 1
    assert client.get("/v1/batches", headers=bearer(make_key("other"))).json()["items"] == []

    job = submit(client, key, input=upload)
    refused = client.delete(f"/v1/jobs/{job['id']}", headers=bearer(key))
    assert refused.status_code == 409 and error_of(refused)["code"] == "job_not_finished"
    _succeed(session_factory, job["id"], storage)
    prefix = f"tenants/{tenant_id('acme')}/jobs/{job['id']}/"
    assert storage.list_keys(prefix)
    assert client.delete(f"/v1/jobs/{job['id']}", headers=bearer(make_key("x"))).status_code == 404
    assert client.delete(f"/v1/jobs/{job['id']}", headers=bearer(key)).status_code == 204
    assert storage.list_keys(prefix) == []
    assert client.get(f"/v1/jobs/{job['id']}", headers=bearer(key)).status_code == 404


def test_openapi_documents_the_upload_body_and_error_answers(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    upload = doc["paths"]["/v1/uploads"]["post"]
    schema = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["properties"]["file"]["format"] == "binary"
    create = doc["paths"]["/v1/jobs"]["post"]["responses"]
    assert {"401", "409", "413", "422"} <= set(create)
    assert create["409"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorResponse")
    assert "404" in doc["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]
    for path in ("/v1/me", "/v1/batches"):
        assert "get" in doc["paths"][path]
    assert "delete" in doc["paths"]["/v1/jobs/{job_id}"]


def test_phase_is_null_once_a_job_ends_and_progress_moves_by_phase(
    client: TestClient, key: str, upload: str, session_factory: sessionmaker[Session]
) -> None:
    job = submit(client, key, input=upload)
    seen = []
    for phase, done in [
        (JobPhase.probing, 0),
        (JobPhase.encoding, 0),
        (JobPhase.assembling, 1),
        (JobPhase.verifying, 1),
        (JobPhase.uploading, 1),
    ]:
        with session_factory.begin() as s:
            s.execute(
                update(Job)
                .where(Job.id == uuid.UUID(job["id"]))
                .values(status=JobStatus.running, phase=phase, gops_total=1, gops_done=done)
            )
        seen.append(client.get(f"/v1/jobs/{job['id']}", headers=bearer(key)).json())
    progress = [j["progress_percent"] for j in seen]
    assert progress == sorted(progress) and len(set(progress)) == 5, progress  # a 1-GOP job moves
    with session_factory.begin() as s:  # a row an older runner ended without clearing the phase
        s.execute(
            update(Job).where(Job.id == uuid.UUID(job["id"])).values(status=JobStatus.canceled)
        )
    ended = client.get(f"/v1/jobs/{job['id']}", headers=bearer(key)).json()
    assert ended["phase"] is None


def test_metrics_are_for_the_operator_and_count_requests_by_route(
    settings: Settings,
    session_factory: sessionmaker[Session],
    storage: LocalStorage,
    clock: FakeClock,
    key: str,
) -> None:
    app = create_app(settings, session_factory=session_factory, storage=storage, clock=clock)
    with TestClient(app, client=("203.0.113.7", 40000)) as remote:  # no traffic: ASGI in-process
        assert remote.get("/metrics").status_code == 403
    with TestClient(app, client=("127.0.0.1", 40000)) as local:
        local.get(f"/v1/jobs/{uuid.uuid4()}", headers=bearer(key))
        body = local.get("/metrics").text
    assert (
        'splatpack_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"} 1.0'
        in body
    )
    assert 'splatpack_http_request_duration_seconds_bucket{le="0.005",method="GET"' in body
    guarded = create_app(
        settings.model_copy(update={"metrics_token": "s3cret"}),
        session_factory=session_factory,
        storage=storage,
        clock=clock,
    )
    with TestClient(guarded, client=("203.0.113.7", 40000)) as remote:
        assert remote.get("/metrics").status_code == 401
        assert remote.get("/metrics", headers=bearer("wrong")).status_code == 401
        assert remote.get("/metrics", headers=bearer("s3cret")).status_code == 200


# ------------------------------------------------------ under a real uvicorn


@contextlib.contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """``app`` under uvicorn on a free 127.0.0.1 port, in a thread."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_live_server_errors_close_cleanly_and_links_name_its_port(
    app_without_public_url: FastAPI,
    session_factory: sessionmaker[Session],
    storage: LocalStorage,
    key: str,
    upload: str,
) -> None:
    app = app_without_public_url

    @app.get("/test-only/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    @app.get("/test-only/overflow")
    def overflow() -> None:
        with session_factory() as s:
            s.execute(text("SELECT 2147483648::integer"))

    with live_server(app) as base, httpx.Client(base_url=base) as http:
        job = http.post("/v1/jobs", json={"input": upload}, headers=bearer(key)).json()
        _succeed(session_factory, job["id"], storage)
        links = http.get(f"/v1/jobs/{job['id']}/outputs", headers=bearer(key)).json()
        assert links["outputs"][0]["url"].startswith(f"{base}/v1/jobs/")

        data_error = http.get("/test-only/overflow")
        assert data_error.status_code == 422 and "out of range" in data_error.text
        crashed = http.get("/test-only/boom")
        assert crashed.status_code == 500
        assert crashed.headers["connection"] == "close"
        # the client knows not to reuse the connection: the next request just works
        assert http.get("/healthz").status_code == 200
        with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as raw:
            raw.sendall(b"GET /test-only/boom HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = raw.recv(65536).decode()
            assert answer.startswith("HTTP/1.1 500") and "connection: close" in answer.lower()
