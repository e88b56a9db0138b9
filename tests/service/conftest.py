"""The real app on a fresh real Postgres per test, with local storage and a settable clock."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from infra.models import Tenant
from infra.settings import Settings
from infra.storage import LocalStorage
from infra.tenants import create_tenant_key
from service.app import create_app
from tests.service.helpers import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2030, 1, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
def input_root(tmp_path: Path) -> Path:
    root = tmp_path / "inputs"
    root.mkdir()
    return root


@pytest.fixture
def settings(tmp_path: Path, input_root: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        storage_root=tmp_path / "storage",
        allowed_input_roots=[input_root],
        allowed_input_buckets=["partner-bucket"],
        max_upload_bytes=64 * 1024,
        max_request_json_bytes=16 * 1024,
        max_user_metadata_bytes=1024,
        max_batch_inputs=5,
        scheduler_interval_seconds=0,
        public_base_url="http://testserver",
    )


@pytest.fixture
def storage(settings: Settings) -> LocalStorage:
    return LocalStorage(settings.resolved_storage_root)


@pytest.fixture
def app(
    settings: Settings,
    session_factory: sessionmaker[Session],
    storage: LocalStorage,
    clock: FakeClock,
) -> FastAPI:
    return create_app(settings, session_factory=session_factory, storage=storage, clock=clock)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    # a loopback peer, as a local client would be (/metrics serves loopback clients only)
    with TestClient(app, client=("127.0.0.1", 50000)) as test_client:
        yield test_client


@pytest.fixture
def make_key(session_factory: sessionmaker[Session]) -> Callable[[str], str]:
    """``make_key(tenant_name) -> plaintext key`` (creates the tenant)."""

    def make(name: str) -> str:
        with session_factory() as session:
            key = create_tenant_key(session, name)
            session.commit()
        return key

    return make


@pytest.fixture
def tenant_id(session_factory: sessionmaker[Session]) -> Callable[[str], uuid.UUID]:
    def lookup(name: str) -> uuid.UUID:
        with session_factory() as session:
            return session.scalars(select(Tenant.id).where(Tenant.name == name)).one()

    return lookup
