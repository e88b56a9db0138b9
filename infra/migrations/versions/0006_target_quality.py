"""target-quality mode: a job's quality target and each GOP's search

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08

``jobs.target_psnr`` (dB) and ``jobs.target_msssim``: the job option of the
target-quality mode (codec/target.py), at most one set; null (every job made
before this migration) encodes at the job's quality level as before.
``job_gops.target``: the GOP's search (target, reached, status, trials) as JSON,
so a resumed job's report.json keeps the GOPs encoded before the restart.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("target_psnr", sa.Float(), nullable=True))
    op.add_column("jobs", sa.Column("target_msssim", sa.Float(), nullable=True))
    op.add_column("job_gops", sa.Column("target", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("job_gops", "target")
    op.drop_column("jobs", "target_msssim")
    op.drop_column("jobs", "target_psnr")
