"""Fixtures for worker tests (helpers live in tests/workers/helpers.py)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.workers.helpers import add_tenant


@pytest.fixture
def tenant_id(session_factory: sessionmaker[Session]) -> uuid.UUID:
    return add_tenant(session_factory)
