"""Callback plumbing on the API side: the per-tenant signing secret, and a cancel that
makes the job's callback due (a runner's dispatcher delivers it)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from infra.models import Job, Tenant
from infra.settings import Settings
from infra.storage import LocalStorage
from service.app import create_app
from tests.service.helpers import FakeClock, bearer, error_of, put_upload, submit

SECRET = re.compile(r"whsec_[0-9a-f]{64}")


def test_each_tenant_reads_and_rotates_its_own_callback_secret(
    client: TestClient,
    make_key: Callable[[str], str],
    session_factory: sessionmaker[Session],
) -> None:
    key_a, key_b = make_key("a"), make_key("b")
    a = client.get("/v1/callback-secret", headers=bearer(key_a))
    b = client.get("/v1/callback-secret", headers=bearer(key_b))
    assert a.status_code == b.status_code == 200
    assert SECRET.fullmatch(a.json()["secret"]) and SECRET.fullmatch(b.json()["secret"])
    assert a.json()["secret"] != b.json()["secret"]
    assert a.json()["signature_header"] == "X-Splatpack-Signature"
    assert a.json()["timestamp_header"] == "X-Splatpack-Timestamp"
    assert a.json()["algorithm"] == "hmac-sha256"

    rotated = client.post("/v1/callback-secret", headers=bearer(key_a))
    assert rotated.status_code == 200
    new = rotated.json()["secret"]
    assert SECRET.fullmatch(new) and new != a.json()["secret"]
    assert client.get("/v1/callback-secret", headers=bearer(key_a)).json()["secret"] == new
    assert client.get("/v1/callback-secret", headers=bearer(key_b)).json() == b.json()
    with session_factory() as session:
        stored = {
            name: secret
            for name, secret in session.execute(select(Tenant.name, Tenant.callback_secret))
        }
    assert stored == {"a": new, "b": b.json()["secret"]}  # what the runners sign with

    anonymous = client.get("/v1/callback-secret")
    assert anonymous.status_code == 401 and error_of(anonymous)["code"] == "unauthorized"
    assert client.post("/v1/callback-secret").status_code == 401


@pytest.fixture
def app_with_private_callbacks(
    settings: Settings,
    session_factory: sessionmaker[Session],
    storage: LocalStorage,
    clock: FakeClock,
) -> Iterator[TestClient]:
    """The app with loopback callback URLs allowed (the receiver would be on this host)."""
    allowing = settings.model_copy(update={"callback_allow_private": True})
    app = create_app(allowing, session_factory=session_factory, storage=storage, clock=clock)
    with TestClient(app) as client:
        yield client


def test_canceling_a_queued_job_makes_its_callback_due(
    app_with_private_callbacks: TestClient,
    make_key: Callable[[str], str],
    tenant_id: Callable[[str], uuid.UUID],
    storage: LocalStorage,
    session_factory: sessionmaker[Session],
) -> None:
    client = app_with_private_callbacks
    key = make_key("a")
    upload = put_upload(storage, tenant_id("a"))
    with_hook = submit(client, key, input=upload, callback_url="http://127.0.0.1:9/hook")
    without = submit(client, key, input=upload)
    assert with_hook["callback_status"] is None and with_hook["callback_attempts"] == 0

    canceled = client.post(f"/v1/jobs/{with_hook['id']}/cancel", headers=bearer(key)).json()
    assert canceled["status"] == "canceled" and canceled["callback_status"] == "pending"
    plain = client.post(f"/v1/jobs/{without['id']}/cancel", headers=bearer(key)).json()
    assert plain["status"] == "canceled" and plain["callback_status"] is None
    with session_factory() as session:
        job = session.get_one(Job, uuid.UUID(with_hook["id"]))
        assert job.callback_next_at is not None and job.callback_attempts == 0
        assert session.get_one(Job, uuid.UUID(without["id"])).callback_next_at is None
