"""/v1/batches: many jobs at once (a list of inputs, or every video under a prefix)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from sqlalchemy import DateTime, Float, case, cast, func, literal, select, tuple_
from sqlalchemy.dialects.postgresql import UUID as PgUUID
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from infra.jobs import create_job
from infra.models import Batch, Job, JobPhase, JobStatus
from service.auth import TenantDep
from service.deps import SessionDep, SettingsDep, StorageDep
from service.errors import ApiError, not_found
from service.idempotency import ensure_same_request, request_hash
from service.inputs import InputError, list_video_keys, normalize_prefix
from service.routers.jobs import (
    IdempotencyKeyHeader,
    check_options,
    decode_cursor,
    encode_cursor,
    input_or_422,
)
from service.schemas import (
    PHASE_START,
    BatchCreate,
    BatchesPage,
    BatchPublic,
    error_responses,
)

router = APIRouter(prefix="/batches", tags=["batches"])


def _progress_expression() -> Any:
    """``service.schemas.progress_percent`` in SQL (one job's progress)."""
    gops = case(
        (Job.gops_total > 0, func.least(1.0, Job.gops_done / cast(Job.gops_total, Float))),
        else_=0.0,
    )
    frames = case(
        (Job.frames_total > 0, func.least(1.0, Job.frames_done / cast(Job.frames_total, Float))),
        else_=0.0,
    )
    share = func.greatest(gops, frames)
    encoding_start = PHASE_START[JobPhase.encoding]
    encode_span = PHASE_START[JobPhase.assembling] - encoding_start
    running = Job.status == JobStatus.running
    return case(
        (Job.status == JobStatus.succeeded, 100.0),
        (running & (Job.phase == JobPhase.encoding), encoding_start + encode_span * share),
        *(
            (running & (Job.phase == phase), start)
            for phase, start in PHASE_START.items()
            if phase != JobPhase.encoding
        ),
        else_=100.0 * share,
    )


def batch_publics(session: Session, batches: list[Batch]) -> list[BatchPublic]:
    """Each batch with its jobs counted by status and their mean progress (one query)."""
    if not batches:
        return []
    rows = session.execute(
        select(
            Job.batch_id,
            Job.status,
            func.count(),
            func.coalesce(func.sum(_progress_expression()), 0.0),
        )
        .where(Job.batch_id.in_([b.id for b in batches]), Job.tenant_id == batches[0].tenant_id)
        .group_by(Job.batch_id, Job.status)
    ).all()
    counts = {b.id: {s: 0 for s in JobStatus} for b in batches}
    progress_sums = {b.id: 0.0 for b in batches}
    for batch_id, job_status, count, summed in rows:
        counts[batch_id][job_status] = int(count)
        progress_sums[batch_id] += float(summed)
    out = []
    for b in batches:
        total = sum(counts[b.id].values())
        out.append(
            BatchPublic.from_batch(b, counts[b.id], progress_sums[b.id] / total if total else 0.0)
        )
    return out


def batch_public(session: Session, batch: Batch) -> BatchPublic:
    """The batch with its jobs counted by status and their mean progress."""
    return batch_publics(session, [batch])[0]


def _existing(session: Session, tenant_id: uuid.UUID, key: str) -> Batch | None:
    return session.scalars(
        select(Batch).where(Batch.tenant_id == tenant_id, Batch.idempotency_key == key)
    ).first()


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=BatchPublic,
    responses={
        200: {"model": BatchPublic, "description": "replay of an Idempotency-Key"},
        **error_responses(409),
    },
)
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
    body_hash = request_hash(body)
    if idempotency_key is not None and (found := _existing(session, tenant.id, idempotency_key)):
        ensure_same_request(found.idempotency_hash, body_hash, idempotency_key, "batch")
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
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
        id=uuid.uuid4(),
        tenant_id=tenant.id,
        source=source,
        idempotency_key=idempotency_key,
        idempotency_hash=body_hash if idempotency_key is not None else None,
    )
    session.add(batch)
    try:
        session.flush()
    except IntegrityError:  # a concurrent request with the same Idempotency-Key won
        session.rollback()
        found = _existing(session, tenant.id, idempotency_key) if idempotency_key else None
        if found is None or idempotency_key is None:
            raise
        ensure_same_request(found.idempotency_hash, body_hash, idempotency_key, "batch")
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
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


@router.get("", response_model=BatchesPage)
def list_batches(
    tenant: TenantDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> BatchesPage:
    """Your batches, newest first; follow ``next_cursor`` until it is null."""
    query = select(Batch).where(Batch.tenant_id == tenant.id)
    if cursor:
        created_at, batch_id = decode_cursor(cursor)
        query = query.where(
            tuple_(Batch.created_at, Batch.id)
            < tuple_(
                literal(created_at, DateTime(timezone=True)),
                literal(batch_id, PgUUID(as_uuid=True)),
            )
        )
    rows = list(
        session.scalars(query.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit + 1))
    )
    page, more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if more and page else None
    return BatchesPage(items=batch_publics(session, page), next_cursor=next_cursor)


@router.get("/{batch_id}", response_model=BatchPublic)
def get_batch(batch_id: uuid.UUID, tenant: TenantDep, session: SessionDep) -> BatchPublic:
    """Counts by status and aggregate progress; list its jobs with GET /v1/jobs?batch_id=."""
    batch = session.scalars(
        select(Batch).where(Batch.id == batch_id, Batch.tenant_id == tenant.id)
    ).first()
    if batch is None:
        raise not_found("batch", batch_id)
    return batch_public(session, batch)
