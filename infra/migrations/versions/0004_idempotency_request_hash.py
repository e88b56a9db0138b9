"""idempotency keys bound to the request that made them

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07

``jobs.idempotency_hash`` and ``batches.idempotency_hash``: sha256 (hex) of the
normalised request body that first used the row's ``idempotency_key``. The API
replays the row only for a request with the same hash and answers 409
``idempotency_key_reused`` otherwise (``service/idempotency.py``). Rows made
before this migration have no hash and keep replaying as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("idempotency_hash", sa.String(64), nullable=True))
    op.add_column("batches", sa.Column("idempotency_hash", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("batches", "idempotency_hash")
    op.drop_column("jobs", "idempotency_hash")
