"""Creating jobs: shared by the API and the scheduler.

The output prefix is built from ids only (``tenants/<tenant_id>/jobs/<job_id>/``),
never from user strings. An ``idempotency_key`` makes creation idempotent per
tenant: the same key returns the job made the first time, also under concurrent
requests (the unique constraint decides; the loser reads the winner's row).

These functions flush but never commit: the caller owns the transaction.

Every writer that ends a job (the runner, the API's cancel) sets
:func:`callback_due_values` in the same transaction, so a callback is never lost
between the job ending and its delivery (``workers.callback_dispatch``).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from infra.models import CallbackStatus, Job, JobStatus


def job_output_prefix(tenant_id: uuid.UUID, job_id: uuid.UUID) -> str:
    """Storage key prefix of a job's outputs."""
    return f"tenants/{tenant_id}/jobs/{job_id}/"


def callback_due_values(callback_url: str | None) -> dict[str, Any]:
    """Columns that make a job's callback due now (none without a callback URL); set them
    with the terminal status."""
    if not callback_url:
        return {}
    return {
        "callback_status": CallbackStatus.pending.value,
        "callback_attempts": 0,
        "callback_next_at": func.now(),
        "callback_error": None,
    }


def find_job_by_idempotency_key(session: Session, tenant_id: uuid.UUID, key: str) -> Job | None:
    return session.scalars(
        select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key)
    ).first()


def create_or_get_job(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    idempotency_key: str | None = None,
    **fields: Any,
) -> tuple[Job, bool]:
    """Create a queued job, or return the one already made with ``idempotency_key``.

    ``fields`` are :class:`~infra.models.Job` columns (``input_uri`` is required;
    ``id``, ``tenant_id``, ``output_prefix`` and state columns are set here).
    Returns ``(job, created)``.
    """
    if "input_uri" not in fields:
        raise TypeError("create_job needs input_uri")
    forbidden = {"tenant_id", "output_prefix", "status", "idempotency_key"} & fields.keys()
    if forbidden:
        raise TypeError(f"create_job sets {sorted(forbidden)} itself; do not pass them")
    if idempotency_key is not None:
        existing = find_job_by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is not None:
            return existing, False
    job_id = fields.pop("id", None) or uuid.uuid4()
    job = Job(
        id=job_id,
        tenant_id=tenant_id,
        idempotency_key=idempotency_key,
        output_prefix=job_output_prefix(tenant_id, job_id),
        **fields,
    )
    if idempotency_key is None:
        session.add(job)
        session.flush()
        return job, True
    savepoint = session.begin_nested()
    try:
        session.add(job)
        session.flush()
    except IntegrityError:
        savepoint.rollback()
        existing = find_job_by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is None:  # the conflict was something else
            raise
        return existing, False
    savepoint.commit()
    return job, True


def create_job(session: Session, tenant_id: uuid.UUID, **fields: Any) -> Job:
    """Create a job (or return the idempotent twin); see :func:`create_or_get_job`."""
    job, _created = create_or_get_job(session, tenant_id, **fields)
    return job


def requeue_leases_of(session: Session, worker_id: str) -> list[uuid.UUID]:
    """Hand the running jobs leased to ``worker_id`` (a runner known to be dead) back to the
    queue now rather than when their leases run out; returns their ids. The attempt they
    used stays counted, so a job that kills its runner every time still ends at
    ``max_attempts``."""
    rows = session.execute(
        update(Job)
        .where(Job.status == JobStatus.running, Job.lease_owner == worker_id)
        .values(status=JobStatus.queued, phase=None, lease_owner=None, lease_expires_at=None)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).all()
    return [row[0] for row in rows]
