"""/v1/batches: explicit lists and prefix expansion over local storage, with aggregate progress."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from infra.models import Job, JobStatus
from infra.storage import LocalStorage
from tests.service.helpers import FAKE_VIDEO, bearer, error_of, put_upload


def test_batch_from_a_storage_prefix_makes_one_job_per_video(
    client: TestClient,
    make_key: Callable[[str], str],
    tenant_id: Callable[[str], uuid.UUID],
    storage: LocalStorage,
) -> None:
    key = make_key("acme")
    tid = tenant_id("acme")
    for name in (
        "inbox/a.mp4",
        "inbox/b.MOV",
        "inbox/sub/c.webm",
        "inbox/notes.txt",
        "other/d.mp4",
    ):
        storage.put_bytes(f"tenants/{tid}/{name}", FAKE_VIDEO)
    storage.put_bytes(f"tenants/{tid}/jobs/{uuid.uuid4()}/preview.mp4", FAKE_VIDEO)  # an output

    response = client.post(
        "/v1/batches",
        json={
            "input_prefix": f"s3://splatpack/tenants/{tid}/inbox/",
            "job": {"preset": "slow", "priority": 3},
        },
        headers=bearer(key),
    )
    assert response.status_code == 201, response.text
    batch = response.json()
    assert batch["total_jobs"] == 3 and batch["counts"]["queued"] == 3 and not batch["done"]
    jobs = client.get("/v1/jobs", params={"batch_id": batch["id"]}, headers=bearer(key)).json()[
        "items"
    ]
    assert sorted(j["input"] for j in jobs) == [
        f"tenants/{tid}/inbox/a.mp4",
        f"tenants/{tid}/inbox/b.MOV",
        f"tenants/{tid}/inbox/sub/c.webm",
    ]
    assert all(j["preset"] == "slow" and j["priority"] == 3 for j in jobs)

    whole_area = client.post(
        "/v1/batches", json={"input_prefix": f"tenants/{tid}"}, headers=bearer(key)
    )
    assert (
        whole_area.status_code == 201 and whole_area.json()["total_jobs"] == 4
    )  # never the output


def test_batch_progress_and_counts(
    client: TestClient,
    make_key: Callable[[str], str],
    tenant_id: Callable[[str], uuid.UUID],
    storage: LocalStorage,
    session_factory: sessionmaker[Session],
) -> None:
    key = make_key("acme")
    upload = put_upload(storage, tenant_id("acme"))
    batch = client.post("/v1/batches", json={"inputs": [upload] * 4}, headers=bearer(key)).json()
    assert batch["source"]["inputs"] == [upload] * 4
    with session_factory() as session:
        ids = list(
            session.scalars(
                select(Job.id).where(Job.batch_id == uuid.UUID(batch["id"])).order_by(Job.id)
            )
        )
        session.execute(update(Job).where(Job.id == ids[0]).values(status=JobStatus.succeeded))
        session.execute(
            update(Job)
            .where(Job.id == ids[1])
            .values(status=JobStatus.running, gops_total=4, gops_done=2)
        )
        session.execute(update(Job).where(Job.id == ids[2]).values(status=JobStatus.failed))
        session.commit()
    got = client.get(f"/v1/batches/{batch['id']}", headers=bearer(key)).json()
    assert got["counts"] == {"queued": 1, "running": 1, "succeeded": 1, "failed": 1, "canceled": 0}
    assert got["progress_percent"] == 37.5  # (100 + 50 + 0 + 0) / 4
    assert got["done"] is False


def test_batch_validation_isolation_and_idempotency(
    client: TestClient,
    make_key: Callable[[str], str],
    tenant_id: Callable[[str], uuid.UUID],
    storage: LocalStorage,
) -> None:
    key_a, key_b = make_key("a"), make_key("b")
    upload_a = put_upload(storage, tenant_id("a"))
    cases = [
        ({}, 422, "exactly one"),
        ({"inputs": [upload_a], "input_prefix": f"tenants/{tenant_id('a')}/"}, 422, "exactly one"),
        ({"inputs": []}, 422, "at least 1"),
        ({"inputs": [upload_a, "s3://nope/x.mp4"]}, 422, "inputs[1]"),
        ({"inputs": [upload_a] * 6}, 422, "limit of 5"),
        ({"input_prefix": f"tenants/{tenant_id('b')}/"}, 422, "not under your area"),
        ({"input_prefix": "s3://another-bucket/x/"}, 422, "only prefixes in the service bucket"),
        ({"input_prefix": f"tenants/{tenant_id('a')}/empty/"}, 422, "no videos under"),
        ({"inputs": [upload_a], "job": {"preset": "turbo"}}, 422, "job.preset"),
    ]
    for body, code, message in cases:
        response = client.post("/v1/batches", json=body, headers=bearer(key_a))
        assert response.status_code == code, (body, response.text)
        assert message in error_of(response)["message"], (body, response.json())

    first = client.post(
        "/v1/batches",
        json={"inputs": [upload_a]},
        headers={**bearer(key_a), "Idempotency-Key": "b1"},
    )
    again = client.post(
        "/v1/batches",
        json={"inputs": [upload_a]},
        headers={**bearer(key_a), "Idempotency-Key": "b1"},
    )
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] and again.json()["total_jobs"] == 1
    assert client.get(f"/v1/batches/{first.json()['id']}", headers=bearer(key_b)).status_code == 404
    assert client.get(f"/v1/batches/{uuid.uuid4()}", headers=bearer(key_a)).status_code == 404
