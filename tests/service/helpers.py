"""Small helpers shared by the service tests."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient

from infra.storage import Storage

FAKE_VIDEO = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64  # only its bytes matter to the API


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def put_upload(storage: Storage, tenant: uuid.UUID, name: str = "clip.mp4") -> str:
    """Put a fake video where an upload of ``tenant`` would land; return its key."""
    key = f"tenants/{tenant}/uploads/{name}"
    storage.put_bytes(key, FAKE_VIDEO)
    return key


def submit(client: TestClient, key: str, **body: Any) -> Any:
    response = client.post("/v1/jobs", json=body, headers=bearer(key))
    assert response.status_code == 201, response.text
    return response.json()


def error_of(response: Any) -> dict[str, Any]:
    """The ``error`` object of an error response (asserting the shape)."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body
    error: dict[str, Any] = body["error"]
    return error
