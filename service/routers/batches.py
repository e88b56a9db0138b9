"""/v1/batches: many jobs at once (a list of inputs, or every video under a prefix)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status
from sqlalchemy import Float, case, cast, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from infra.jobs import create_job
from infra.models import Batch, Job, JobStatus
from service.auth import TenantDep
from service.deps import SessionDep, SettingsDep, StorageDep
from service.errors import ApiError, not_found
from service.inputs import InputError, list_video_keys, normalize_prefix
from service.routers.jobs import IdempotencyKeyHeader, check_options, input_or_422
from service.schemas import BatchCreate, BatchPublic

router = APIRouter(prefix="/batches", tags=["batches"])


def batch_public(session: Session, batch: Batch) -> BatchPublic:
    """The batch with its jobs counted by status and their mean progress."""
    progress = case(
        (Job.status == JobStatus.succeeded, 100.0),
        (
            Job.gops_total > 0,
            func.least(100.0, 100.0 * Job.gops_done / cast(Job.gops_total, Float)),
        ),
        else_=0.0,
    )
    rows = session.execute(
        select(Job.status, func.count(), func.coalesce(func.sum(progress), 0.0))
        .where(Job.batch_id == batch.id, Job.tenant_id == batch.tenant_id)
        .group_by(Job.status)
    ).all()
    counts = {s: 0 for s in JobStatus}
    progress_sum = 0.0
    for job_status, count, summed in rows:
        counts[job_status] = int(count)
        progress_sum += float(summed)
    total = sum(counts.values())
    return BatchPublic.from_batch(batch, counts, progress_sum / total if total else 0.0)


def _existing(session: Session, tenant_id: uuid.UUID, key: str) -> Batch | None:
    return session.scalars(
        select(Batch).where(Batch.tenant_id == tenant_id, Batch.idempotency_key == key)
    ).first()


@router.post("", status_code=status.HTTP_201_CREATED, response_model=BatchPublic)
def create_batch(
    body: BatchCreate,
    response: Response,
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> BatchPublic:
    """One job per input (or per video under ``input_prefix``), all in one transaction."""
    if idempotency_key is not None and (found := _existing(session, tenant.id, idempotency_key)):
        response.status_code = status.HTTP_200_OK
        return batch_public(session, found)
    check_options(body.job, settings, field="job.")
    limit = settings.max_batch_inputs
    if body.inputs is not None:
        if len(body.inputs) > limit:
            raise ApiError(
                422,
                "too_many_inputs",
                f"{len(body.inputs)} inputs is over the limit of {limit}; split the batch",
            )
        input_uris = [
            input_or_422(
                raw, tenant_id=tenant.id, settings=settings, storage=storage, field=f"inputs[{i}]"
            )
            for i, raw in enumerate(body.inputs)
        ]
        source: dict[str, object] = {"inputs": body.inputs}
    else:
        assert body.input_prefix is not None
        try:
            prefix = normalize_prefix(body.input_prefix, tenant_id=tenant.id, settings=settings)
        except InputError as err:
            raise ApiError(422, "invalid_input", f"input_prefix: {err}") from err
        input_uris = list_video_keys(storage, prefix, tenant.id)
        if not input_uris:
            raise ApiError(
                422,
                "no_inputs",
                f"no videos under {prefix!r} (looked for .mp4, .mov, .mkv, .webm, ...); upload some first",
            )
        if len(input_uris) > limit:
            raise ApiError(
                422,
                "too_many_inputs",
                f"{len(input_uris)} videos under {prefix!r} is over the limit of {limit}; use a narrower prefix",
            )
        source = {"input_prefix": body.input_prefix, "expanded_prefix": prefix}
    source["job"] = body.job.model_dump(mode="json")
    batch = Batch(
        id=uuid.uuid4(), tenant_id=tenant.id, source=source, idempotency_key=idempotency_key
    )
    session.add(batch)
    try:
        session.flush()
    except IntegrityError:  # a concurrent request with the same Idempotency-Key won
        session.rollback()
        found = _existing(session, tenant.id, idempotency_key) if idempotency_key else None
        if found is None:
            raise
        response.status_code = status.HTTP_200_OK
        return batch_public(session, found)
    for input_uri in input_uris:
        create_job(
            session,
            tenant.id,
            input_uri=input_uri,
            batch_id=batch.id,
            max_attempts=settings.max_attempts,
            **body.job.job_fields(),
        )
    session.commit()
    response.headers["Location"] = f"/v1/batches/{batch.id}"
    return batch_public(session, batch)


@router.get("/{batch_id}", response_model=BatchPublic)
def get_batch(batch_id: uuid.UUID, tenant: TenantDep, session: SessionDep) -> BatchPublic:
    """Counts by status and aggregate progress; list its jobs with GET /v1/jobs?batch_id=."""
    batch = session.scalars(
        select(Batch).where(Batch.id == batch_id, Batch.tenant_id == tenant.id)
    ).first()
    if batch is None:
        raise not_found("batch", batch_id)
    return batch_public(session, batch)
