"""The job option of the target-quality mode (``target_psnr`` / ``target_msssim``): accepted,
stored and shown; absurd values refused with a 422 naming the field."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from infra.storage import LocalStorage
from tests.service.helpers import bearer, error_of, put_upload

KeyMaker = Callable[[str], str]
IdOf = Callable[[str], uuid.UUID]


@pytest.fixture
def key(make_key: KeyMaker) -> str:
    return make_key("tenant-t")


@pytest.fixture
def upload(key: str, tenant_id: IdOf, storage: LocalStorage) -> str:
    return put_upload(storage, tenant_id("tenant-t"))


def test_a_target_is_stored_and_shown(client: TestClient, key: str, upload: str) -> None:
    made = client.post("/v1/jobs", json={"input": upload, "target_psnr": 38}, headers=bearer(key))
    assert made.status_code == 201, made.text
    job = client.get(f"/v1/jobs/{made.json()['id']}", headers=bearer(key)).json()
    assert job["target_psnr"] == 38.0 and job["target_msssim"] is None
    other = client.post(
        "/v1/jobs", json={"input": upload, "target_msssim": 0.97}, headers=bearer(key)
    ).json()
    assert other["target_msssim"] == 0.97 and other["target_psnr"] is None
    plain = client.post("/v1/jobs", json={"input": upload}, headers=bearer(key)).json()
    assert plain["target_psnr"] is None and plain["target_msssim"] is None


@pytest.mark.parametrize(
    ("body", "field", "hint"),
    [
        ({"target_psnr": 1000}, "target_psnr", "less than or equal to 99"),
        ({"target_psnr": -1}, "target_psnr", "greater than or equal to 10"),
        ({"target_psnr": "38"}, "target_psnr", "number"),
        ({"target_psnr": True}, "target_psnr", "number"),
        ({"target_msssim": 1.5}, "target_msssim", "less than or equal to 0.9999"),
    ],
)
def test_absurd_targets_are_422_naming_the_field(
    client: TestClient, key: str, upload: str, body: dict[str, object], field: str, hint: str
) -> None:
    response = client.post("/v1/jobs", json={"input": upload, **body}, headers=bearer(key))
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["message"].startswith(f"{field}: ") and hint in error["message"], error


def test_non_finite_and_double_targets_are_refused(
    client: TestClient, key: str, upload: str
) -> None:
    nan = client.post(
        "/v1/jobs",
        content=f'{{"input": "{upload}", "target_psnr": NaN}}',
        headers={**bearer(key), "Content-Type": "application/json"},
    )
    assert nan.status_code == 422, nan.text
    assert "target_psnr" in error_of(nan)["message"]
    both = client.post(
        "/v1/jobs",
        json={"input": upload, "target_psnr": 38, "target_msssim": 0.97},
        headers=bearer(key),
    )
    assert both.status_code == 422, both.text
    assert "at most one of target_psnr and target_msssim" in error_of(both)["message"]
