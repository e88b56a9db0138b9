"""GOP encode-time histogram kept by a trigger, so /metrics never scans job_gops

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

``gop_encode_seconds_buckets`` holds one row per upper bound (``'Infinity'``
last) with the number of GOP encodes in that bucket and their summed seconds.
An AFTER INSERT / UPDATE OF encode_seconds trigger on ``job_gops`` adds each new
value to its bucket in the writer's transaction; existing rows are counted once
here. The bounds are fixed in this file (a later migration may add rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BOUNDS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

_BUCKET_OF = "(SELECT min(b.le) FROM gop_encode_seconds_buckets b WHERE b.le >= {value})"

OBSERVE_FUNCTION = f"""
CREATE FUNCTION splatpack_observe_gop_encode_seconds() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.encode_seconds IS NULL OR NEW.encode_seconds = 'NaN'::float8 THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.encode_seconds IS NOT DISTINCT FROM OLD.encode_seconds THEN
        RETURN NEW;
    END IF;
    UPDATE gop_encode_seconds_buckets
       SET observations = observations + 1,
           seconds_sum = seconds_sum + NEW.encode_seconds
     WHERE le = {_BUCKET_OF.format(value="NEW.encode_seconds")};
    RETURN NEW;
END
$$
"""

BACKFILL = f"""
UPDATE gop_encode_seconds_buckets AS t
   SET observations = s.n, seconds_sum = s.total
  FROM (
        SELECT {_BUCKET_OF.format(value="g.encode_seconds")} AS le,
               count(*) AS n,
               sum(g.encode_seconds) AS total
          FROM job_gops g
         WHERE g.encode_seconds IS NOT NULL AND g.encode_seconds <> 'NaN'::float8
         GROUP BY 1
       ) AS s
 WHERE t.le = s.le
"""


def upgrade() -> None:
    op.create_table(
        "gop_encode_seconds_buckets",
        sa.Column("le", sa.Float(), nullable=False),
        sa.Column("observations", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("seconds_sum", sa.Float(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("le"),
    )
    buckets = sa.table("gop_encode_seconds_buckets", sa.column("le", sa.Float()))
    op.bulk_insert(buckets, [{"le": bound} for bound in (*BOUNDS_S, float("inf"))])
    op.execute(OBSERVE_FUNCTION)
    # CREATE TRIGGER waits for transactions writing job_gops; the backfill after it sees
    # every row committed before, and the trigger every row after: each counted once
    op.execute(
        "CREATE TRIGGER job_gops_encode_seconds_histogram "
        "AFTER INSERT OR UPDATE OF encode_seconds ON job_gops "
        "FOR EACH ROW EXECUTE FUNCTION splatpack_observe_gop_encode_seconds()"
    )
    op.execute(BACKFILL)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS job_gops_encode_seconds_histogram ON job_gops")
    op.execute("DROP FUNCTION IF EXISTS splatpack_observe_gop_encode_seconds()")
    op.drop_table("gop_encode_seconds_buckets")
