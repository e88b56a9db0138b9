"""SQLAlchemy 2 typed models: the whole persistent state of the service.

Postgres only (JSONB, UUID, SKIP LOCKED). Schema changes go through Alembic
migrations in ``infra/migrations``; never ``create_all`` outside tests of this file.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"


TERMINAL_STATUSES = (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


class CallbackStatus(enum.StrEnum):
    """``jobs.callback_status``: ``pending`` until the dispatcher (``workers.callback_dispatch``)
    ends it ``delivered``, ``failed`` (tries used up, or a final answer such as 404) or
    ``refused`` (by the SSRF guard, ``infra.callback_urls``)."""

    pending = "pending"
    delivered = "delivered"
    failed = "failed"
    refused = "refused"


class JobPhase(enum.StrEnum):
    probing = "probing"
    encoding = "encoding"
    assembling = "assembling"
    verifying = "verifying"
    uploading = "uploading"


def _now() -> Any:
    return func.now()


# a fresh callback signing secret: "whsec_" + 64 hex digits from 244 random bits
# (gen_random_uuid draws from the server's strong random source); migration 0003 has a copy
CALLBACK_SECRET_SQL = (
    "'whsec_' || encode(sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())), "
    "'hex')"
)


class Tenant(Base):
    """A customer. ``callback_secret`` signs its job callbacks (``workers.callbacks``); it is
    made with the tenant and rotated with ``POST /v1/callback-secret``."""

    __tablename__ = "tenants"
    __mapper_args__ = {"eager_defaults": True}
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    callback_secret: Mapped[str] = mapped_column(
        String(100), server_default=text(CALLBACK_SECRET_SQL)
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class ApiKey(Base):
    """An API key, stored as sha256 of the secret; ``prefix`` is the public part used to look it up."""

    __tablename__ = "api_keys"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_batches_tenant_idempotency"),
    )
    __mapper_args__ = {"eager_defaults": True}
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    source: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)  # the request that made it
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # sha256 hex of the request that first used idempotency_key (migration 0004)
    idempotency_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class Schedule(Base):
    """A cron schedule that turns new objects under ``input_prefix`` into jobs."""

    __tablename__ = "schedules"
    __mapper_args__ = {"eager_defaults": True}
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    cron: Mapped[str] = mapped_column(String(200))
    input_prefix: Mapped[str] = mapped_column(Text)
    job_template: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    next_run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency"),
        Index("ix_jobs_claim", "status", "priority", "created_at"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        # what the callback dispatcher claims: pending callbacks by due time
        Index(
            "ix_jobs_callback_due",
            "callback_next_at",
            postgresql_where=text("callback_status = 'pending'"),
        ),
    )
    # fetch server-side defaults (created_at, updated_at) with RETURNING on insert/update
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("batches.id", ondelete="SET NULL"), index=True
    )
    schedule_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("schedules.id", ondelete="SET NULL")
    )
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # sha256 hex of the request that first used idempotency_key (migration 0004)
    idempotency_hash: Mapped[str | None] = mapped_column(String(64))

    # what to do
    input_uri: Mapped[str] = mapped_column(
        Text
    )  # storage key (uploads), s3://bucket/key, or file:///abs/path
    preset: Mapped[str] = mapped_column(String(20), default="fast")
    quality: Mapped[int] = mapped_column(Integer, default=5)
    gop: Mapped[int] = mapped_column(Integer, default=30)
    enhance: Mapped[bool] = mapped_column(Boolean, default=False)
    # target-quality mode (migration 0006): at most one; null = the quality level as is
    target_psnr: Mapped[float | None] = mapped_column(Float)
    target_msssim: Mapped[float | None] = mapped_column(Float)
    max_frames: Mapped[int | None] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer, default=0)  # -50 .. 50, higher first
    output_prefix: Mapped[str] = mapped_column(Text)  # storage key prefix, built from ids
    # the user's "output_prefix": a label only, never a storage path
    output_label: Mapped[str | None] = mapped_column(String(200))
    user_metadata: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    callback_url: Mapped[str | None] = mapped_column(Text)

    # state
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, name="job_status"), default=JobStatus.queued
    )
    phase: Mapped[JobPhase | None] = mapped_column(Enum(JobPhase, name="job_phase"))
    gops_total: Mapped[int | None] = mapped_column(Integer)
    gops_done: Mapped[int] = mapped_column(Integer, default=0)
    # frames to encode (known once probed) and frames encoded so far, partly encoded GOPs
    # included (the runner writes it as GOP tasks report, workers/tasks.py; migration 0005)
    frames_total: Mapped[int | None] = mapped_column(Integer)
    frames_done: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)  # name -> storage key
    report: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # callback delivery (workers/callback_dispatch.py): a CallbackStatus value, null without
    # a callback_url; tries so far; when the next try is due (while pending: also the claim
    # lease of the dispatcher working on it); what the last try got
    callback_status: Mapped[str | None] = mapped_column(String(32))
    callback_attempts: Mapped[int] = mapped_column(Integer, default=0)
    callback_next_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    callback_error: Mapped[str | None] = mapped_column(Text)

    # lease
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobGop(Base):
    """One GOP of a job: written when its payload is safely in storage (resume skips these)."""

    __tablename__ = "job_gops"
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    gop_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    first_frame: Mapped[int] = mapped_column(Integer)
    n_frames: Mapped[int] = mapped_column(Integer)
    payload_key: Mapped[str] = mapped_column(Text)
    payload_bytes: Mapped[int] = mapped_column(BigInteger)
    psnr_db: Mapped[float | None] = mapped_column(Float)
    encode_seconds: Mapped[float | None] = mapped_column(Float)
    # target-quality mode: the GOP's search (codec.target.GopTargetReport.to_dict(), migration 0006)
    target: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


# upper bounds (seconds) of the GOP encode-time histogram; migration 0002 created one row each
GOP_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class GopEncodeSecondsBucket(Base):
    """The running histogram of ``job_gops.encode_seconds``, one row per bucket.

    Kept by the trigger ``job_gops_encode_seconds_histogram`` (migration 0002): every
    GOP row inserted (or re-encoded: ``encode_seconds`` updated) adds 1 to
    ``observations`` and its seconds to ``seconds_sum`` of the first bucket whose
    upper bound ``le`` (``+inf`` last) is at least its value, in the same
    transaction. Reading the histogram is one small query whatever the size of
    ``job_gops``, and the counts only grow (deleting jobs does not take them back),
    as Prometheus counters must.
    """

    __tablename__ = "gop_encode_seconds_buckets"
    le: Mapped[float] = mapped_column(Float, primary_key=True)
    observations: Mapped[int] = mapped_column(BigInteger, default=0)
    seconds_sum: Mapped[float] = mapped_column(Float, default=0.0)


# slots per status in ``job_status_counts``: concurrent writers (one per connection) mostly
# touch different rows, so counting never serialises job transitions
JOB_STATUS_COUNT_SHARDS = 16


class JobStatusCount(Base):
    """Jobs per status, kept by triggers on ``jobs`` (migration 0003), for ``/metrics``.

    Every insert, delete and status change adds +1 / -1 to the row of the status and of
    a shard (``pg_backend_pid() % 16``) in the writer's transaction; a status's count
    is the sum over its shards (a shard alone may be negative). At most 5 x 16 rows,
    however many jobs exist.
    """

    __tablename__ = "job_status_counts"
    status: Mapped[JobStatus] = mapped_column(Enum(JobStatus, name="job_status"), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    jobs: Mapped[int] = mapped_column(BigInteger, default=0)
