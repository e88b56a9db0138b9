"""progress within a GOP: frames done and frames to encode

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08

``jobs.frames_total`` (frames the job encodes, known once probed; null before) and
``jobs.frames_done`` (frames encoded so far, counting frames of GOPs still being
encoded: the runner writes it as its GOP tasks report, ``workers/tasks.py``). The
API's progress uses frames when ``frames_total`` is known and GOPs otherwise, so rows
made before this migration keep their GOP-based progress.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("frames_total", sa.Integer(), nullable=True))
    op.add_column(
        "jobs", sa.Column("frames_done", sa.Integer(), server_default="0", nullable=False)
    )


def downgrade() -> None:
    op.drop_column("jobs", "frames_done")
    op.drop_column("jobs", "frames_total")
