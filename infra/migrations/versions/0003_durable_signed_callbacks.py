"""durable signed callbacks; job counts per status kept by triggers

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09

Callbacks (``workers.callback_dispatch``):

- ``tenants.callback_secret``: the per-tenant HMAC key that signs callbacks; every
  existing tenant gets its own random one (the default is volatile, so Postgres
  evaluates it per row).
- ``jobs.callback_attempts``, ``callback_next_at``, ``callback_error``: the delivery
  queue lives on the job row; ``ix_jobs_callback_due`` (partial, pending only) is
  what dispatchers claim from. Callbacks an older runner left ``pending`` (it died
  mid-delivery) become due now; ``gave_up`` is renamed ``failed``.

Metrics: ``job_status_counts`` holds jobs per (status, shard). Row triggers on
``jobs`` add +1 / -1 on insert, delete and status change, in the writer's
transaction, to the shard ``pg_backend_pid() % 16`` (concurrent writers use
different connections, so they rarely wait on one row); the two rows of a status
change are always locked in enum order, so concurrent transitions cannot deadlock
on them. TRUNCATE empties the table. Existing jobs are counted here once, after
the triggers exist (CREATE TRIGGER waits for transactions writing ``jobs`` and
holds its lock to the end of this migration's transaction).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SHARDS = 16
# a copy of infra.models.CALLBACK_SECRET_SQL as of this revision
CALLBACK_SECRET_SQL = (
    "'whsec_' || encode(sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())), "
    "'hex')"
)

_ADD = """
    INSERT INTO job_status_counts AS c (status, shard, jobs) VALUES ({status}, slot, {delta})
    ON CONFLICT (status, shard) DO UPDATE SET jobs = c.jobs + EXCLUDED.jobs;
"""

COUNT_FUNCTION = f"""
CREATE FUNCTION splatpack_count_job_status() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    slot smallint := pg_backend_pid() % {SHARDS};
BEGIN
    IF TG_OP = 'INSERT' THEN
        {_ADD.format(status="NEW.status", delta="1")}
    ELSIF TG_OP = 'DELETE' THEN
        {_ADD.format(status="OLD.status", delta="-1")}
    ELSIF OLD.status < NEW.status THEN
        {_ADD.format(status="OLD.status", delta="-1")}
        {_ADD.format(status="NEW.status", delta="1")}
    ELSE
        {_ADD.format(status="NEW.status", delta="1")}
        {_ADD.format(status="OLD.status", delta="-1")}
    END IF;
    RETURN NULL;
END
$$
"""

RESET_FUNCTION = """
CREATE FUNCTION splatpack_reset_job_status_counts() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM job_status_counts;
    RETURN NULL;
END
$$
"""

TRIGGERS = {
    "jobs_status_count_insert": "AFTER INSERT ON jobs FOR EACH ROW "
    "EXECUTE FUNCTION splatpack_count_job_status()",
    "jobs_status_count_update": "AFTER UPDATE OF status ON jobs FOR EACH ROW "
    "WHEN (OLD.status IS DISTINCT FROM NEW.status) "
    "EXECUTE FUNCTION splatpack_count_job_status()",
    "jobs_status_count_delete": "AFTER DELETE ON jobs FOR EACH ROW "
    "EXECUTE FUNCTION splatpack_count_job_status()",
    "jobs_status_count_truncate": "AFTER TRUNCATE ON jobs FOR EACH STATEMENT "
    "EXECUTE FUNCTION splatpack_reset_job_status_counts()",
}

BACKFILL = """
INSERT INTO job_status_counts (status, shard, jobs)
SELECT status, 0, count(*) FROM jobs GROUP BY status
"""


def upgrade() -> None:
    # callbacks
    op.add_column(
        "tenants",
        sa.Column(
            "callback_secret",
            sa.String(length=100),
            server_default=sa.text(CALLBACK_SECRET_SQL),
            nullable=False,
        ),
    )
    op.add_column(
        "jobs",
        sa.Column("callback_attempts", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column("jobs", sa.Column("callback_next_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("callback_error", sa.Text(), nullable=True))
    op.execute("UPDATE jobs SET callback_status = 'failed' WHERE callback_status = 'gave_up'")
    op.execute("UPDATE jobs SET callback_next_at = now() WHERE callback_status = 'pending'")
    op.create_index(
        "ix_jobs_callback_due",
        "jobs",
        ["callback_next_at"],
        unique=False,
        postgresql_where=sa.text("callback_status = 'pending'"),
    )

    # jobs per status
    op.create_table(
        "job_status_counts",
        sa.Column("status", postgresql.ENUM(name="job_status", create_type=False), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("jobs", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("status", "shard"),
    )
    op.execute(COUNT_FUNCTION)
    op.execute(RESET_FUNCTION)
    for name, definition in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {definition}")
    op.execute(BACKFILL)


def downgrade() -> None:
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON jobs")
    op.execute("DROP FUNCTION IF EXISTS splatpack_reset_job_status_counts()")
    op.execute("DROP FUNCTION IF EXISTS splatpack_count_job_status()")
    op.drop_table("job_status_counts")

    op.drop_index("ix_jobs_callback_due", table_name="jobs")
    op.execute("UPDATE jobs SET callback_status = 'gave_up' WHERE callback_status = 'failed'")
    op.drop_column("jobs", "callback_error")
    op.drop_column("jobs", "callback_next_at")
    op.drop_column("jobs", "callback_attempts")
    op.drop_column("tenants", "callback_secret")
