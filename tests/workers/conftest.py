"""Fixtures for worker tests (helpers live in tests/workers/helpers.py)."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.workers.helpers import WorkerEnv, add_tenant
from tests.workers.receiver import Answer, Receiver


@pytest.fixture
def tenant_id(session_factory: sessionmaker[Session]) -> uuid.UUID:
    return add_tenant(session_factory)


@pytest.fixture
def worker_env(
    tmp_path: Path, db_url: str, session_factory: sessionmaker[Session], tenant_id: uuid.UUID
) -> WorkerEnv:
    return WorkerEnv(tmp_path, db_url, session_factory, tenant_id)


@pytest.fixture
def receiver_factory() -> Iterator[Any]:
    """``make(statuses, tls=None, hold_first=0) -> Receiver``; all closed afterwards."""
    made: list[Receiver] = []

    def make(
        statuses: list[Answer], tls: ssl.SSLContext | None = None, hold_first: int = 0
    ) -> Receiver:
        r = Receiver(statuses, tls, hold_first)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()
