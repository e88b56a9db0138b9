"""The SSRF guard at submit: callback URLs to non-public addresses are a 422 that says what to fix."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from infra.settings import Settings
from infra.storage import LocalStorage
from service.app import create_app
from tests.service.helpers import FakeClock, bearer, error_of, put_upload, submit

KeyMaker = Callable[[str], str]
IdOf = Callable[[str], uuid.UUID]


@pytest.fixture
def key(make_key: KeyMaker) -> str:
    return make_key("tenant-a")


@pytest.fixture
def upload(key: str, tenant_id: IdOf, storage: LocalStorage) -> str:
    return put_upload(storage, tenant_id("tenant-a"))


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("http://127.0.0.1:8000/hook", "is a loopback address"),
        ("http://localhost:8000/hook", "resolves to 127.0.0.1, a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "is a link-local address"),
        ("http://[::ffff:169.254.169.254]/", "is a link-local address"),
        ("http://10.0.0.8/hook", "is a private address"),
        ("http://[fd00::1]/hook", "is a private address"),
        ("http://0.0.0.0:9000/", "is an unspecified address"),
        ("http://224.0.0.1/", "is a multicast address"),
        ("http://user:secret@example.com/hook", "user name or password"),
    ],
)
def test_refused_callback_urls_are_a_422_naming_the_fix(
    client: TestClient, key: str, upload: str, url: str, hint: str
) -> None:
    response = client.post(
        "/v1/jobs", json={"input": upload, "callback_url": url}, headers=bearer(key)
    )
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "invalid_callback_url"
    assert error["message"].startswith("callback_url: ") and hint in error["message"], error
    if "address" in hint:
        assert "SPLATPACK_CALLBACK_ALLOW_PRIVATE" in error["message"]
    assert client.get("/v1/jobs", headers=bearer(key)).json()["items"] == []


def test_public_callback_urls_are_accepted(client: TestClient, key: str, upload: str) -> None:
    job = submit(client, key, input=upload, callback_url="https://93.184.216.34:8443/hook?t=1")
    assert job["callback_url"] == "https://93.184.216.34:8443/hook?t=1"


def test_batches_and_schedules_check_their_template(
    client: TestClient, key: str, upload: str, tenant_id: IdOf
) -> None:
    metadata_url = {"callback_url": "http://169.254.169.254/latest/meta-data/"}
    batch = client.post(
        "/v1/batches", json={"inputs": [upload], "job": metadata_url}, headers=bearer(key)
    )
    assert batch.status_code == 422, batch.text
    assert error_of(batch)["code"] == "invalid_callback_url"
    assert error_of(batch)["message"].startswith("job.callback_url: ")
    schedule = client.post(
        "/v1/schedules",
        json={
            "cron": "*/15 * * * *",
            "input_prefix": f"tenants/{tenant_id('tenant-a')}/inbox/",
            "job": metadata_url,
        },
        headers=bearer(key),
    )
    assert schedule.status_code == 422, schedule.text
    assert error_of(schedule)["code"] == "invalid_callback_url"
    assert error_of(schedule)["message"].startswith("job.callback_url: ")


def test_the_operator_can_allow_private_receivers(
    settings: Settings,
    session_factory: sessionmaker[Session],
    storage: LocalStorage,
    clock: FakeClock,
    key: str,
    upload: str,
) -> None:
    """``callback_allow_private`` (the demo, tests) admits loopback; metadata stays refused."""
    allowing = settings.model_copy(update={"callback_allow_private": True})
    app = create_app(allowing, session_factory=session_factory, storage=storage, clock=clock)
    with TestClient(app) as client:
        job = submit(client, key, input=upload, callback_url="http://127.0.0.1:8123/hook")
        assert job["callback_url"] == "http://127.0.0.1:8123/hook"
        submit(client, key, input=upload, callback_url="http://localhost:8123/hook")
        metadata = client.post(
            "/v1/jobs",
            json={"input": upload, "callback_url": "http://169.254.169.254/"},
            headers=bearer(key),
        )
        assert metadata.status_code == 422
        assert error_of(metadata)["code"] == "invalid_callback_url"
