"""Fixtures for worker tests (helpers live in tests/workers/helpers.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.workers.helpers import WorkerEnv, add_tenant


@pytest.fixture
def tenant_id(session_factory: sessionmaker[Session]) -> uuid.UUID:
    return add_tenant(session_factory)


@pytest.fixture
def worker_env(
    tmp_path: Path, db_url: str, session_factory: sessionmaker[Session], tenant_id: uuid.UUID
) -> WorkerEnv:
    return WorkerEnv(tmp_path, db_url, session_factory, tenant_id)
