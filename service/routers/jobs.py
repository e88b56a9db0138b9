"""/v1/jobs: submit, read, list, cancel, outputs. Every query is scoped by tenant."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, unquote, urlsplit

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import FileResponse, RedirectResponse
from sqlalchemy import DateTime, literal, select, tuple_
from sqlalchemy.dialects.postgresql import UUID as PgUUID
from sqlalchemy.orm import Session
from starlette.responses import Response as StarletteResponse

from infra.callback_urls import CallbackUrlError, CallbackUrlPolicy
from infra.jobs import callback_due_values, create_or_get_job, find_job_by_idempotency_key
from infra.models import TERMINAL_STATUSES, Job, JobStatus
from infra.settings import Settings
from infra.storage import ObjectNotFoundError, Storage
from service.auth import TenantDep
from service.deps import ClockDep, SessionDep, SettingsDep, StorageDep
from service.errors import ApiError, not_found
from service.idempotency import ensure_same_request, request_hash
from service.inputs import InputError, normalize_input
from service.schemas import (
    ErrorResponse,
    JobCreate,
    JobOptions,
    JobOutputs,
    JobPublic,
    JobsPage,
    OutputLink,
    error_responses,
)

router = APIRouter(prefix="/jobs", tags=["jobs"])

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="printable ASCII; a retry with the same key and body returns what the "
        "first request made (200); the same key with another body is a 409",
    ),
]


def check_options(options: JobOptions, settings: Settings, field: str = "") -> None:
    """Limits that depend on settings (the schema checks the fixed ones).

    The callback URL goes through the SSRF guard (``infra.callback_urls``): a URL
    that is refused now (bad form, or a host that is or resolves to a
    non-public address) is a 422 ``invalid_callback_url``.
    """
    if options.callback_url is not None:
        try:
            CallbackUrlPolicy.from_settings(settings).check(str(options.callback_url))
        except CallbackUrlError as err:
            raise ApiError(422, "invalid_callback_url", f"{field}callback_url: {err}") from err
    size = len(json.dumps(options.metadata, separators=(",", ":")))
    if size > settings.max_user_metadata_bytes:
        raise ApiError(
            422,
            "validation_error",
            f"{field}metadata is {size} bytes as JSON, over the limit of "
            f"{settings.max_user_metadata_bytes}; store less (e.g. an id pointing to your data)",
        )


def input_or_422(
    raw: str, *, tenant_id: uuid.UUID, settings: Settings, storage: Storage, field: str
) -> str:
    try:
        return normalize_input(raw, tenant_id=tenant_id, settings=settings, storage=storage)
    except InputError as err:
        raise ApiError(422, "invalid_input", f"{field}: {err}") from err


def get_tenant_job(
    session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID, *, lock: bool = False
) -> Job:
    query = select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id)
    if lock:
        query = query.with_for_update()
    job = session.scalars(query).first()
    if job is None:
        raise not_found("job", job_id)
    return job


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    responses={
        200: {"model": JobPublic, "description": "replay of an Idempotency-Key"},
        **error_responses(409),
    },
)
def create_job(
    body: JobCreate,
    response: Response,
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JobPublic:
    """Submit one video. With an ``Idempotency-Key``, a retry of the same body returns the first
    job (200); the key with another body is a 409."""
    body_hash = request_hash(body)
    if idempotency_key is not None:
        existing = find_job_by_idempotency_key(session, tenant.id, idempotency_key)
        if existing is not None:
            ensure_same_request(existing.idempotency_hash, body_hash, idempotency_key, "job")
            response.status_code = status.HTTP_200_OK
            response.headers["Idempotent-Replayed"] = "true"
            return JobPublic.from_job(existing)
    check_options(body, settings)
    input_uri = input_or_422(
        body.input, tenant_id=tenant.id, settings=settings, storage=storage, field="input"
    )
    job, created = create_or_get_job(
        session,
        tenant.id,
        idempotency_key=idempotency_key,
        idempotency_hash=body_hash if idempotency_key is not None else None,
        input_uri=input_uri,
        max_attempts=settings.max_attempts,
        **body.job_fields(),
    )
    if not created:
        assert idempotency_key is not None
        ensure_same_request(job.idempotency_hash, body_hash, idempotency_key, "job")
    session.commit()
    if not created:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobPublic.from_job(job)


def encode_cursor(created_at: datetime, job_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(job_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at_text, id_text = json.loads(raw)
        created_at = datetime.fromisoformat(created_at_text)
        if created_at.tzinfo is None:
            raise ValueError("naive timestamp")
        return created_at, uuid.UUID(id_text)
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError) as err:
        raise ApiError(
            400,
            "invalid_cursor",
            "cursor is not one this API returned; start again without ?cursor=",
        ) from err


@router.get("", response_model=JobsPage)
def list_jobs(
    tenant: TenantDep,
    session: SessionDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    batch_id: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> JobsPage:
    """Newest first; follow ``next_cursor`` until it is null."""
    query = select(Job).where(Job.tenant_id == tenant.id)
    if status_filter is not None:
        query = query.where(Job.status == status_filter)
    if batch_id is not None:
        query = query.where(Job.batch_id == batch_id)
    if cursor:
        created_at, job_id = decode_cursor(cursor)
        query = query.where(
            tuple_(Job.created_at, Job.id)
            < tuple_(
                literal(created_at, DateTime(timezone=True)), literal(job_id, PgUUID(as_uuid=True))
            )
        )
    rows = list(
        session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1))
    )
    page, more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if more and page else None
    return JobsPage(items=[JobPublic.from_job(j) for j in page], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: uuid.UUID, tenant: TenantDep, session: SessionDep) -> JobPublic:
    return JobPublic.from_job(get_tenant_job(session, tenant.id, job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses={
        202: {
            "model": JobPublic,
            "description": "running: the runner stops it and marks it canceled",
        },
        409: {"model": ErrorResponse, "description": "the job has already ended"},
    },
)
def cancel_job(
    job_id: uuid.UUID, response: Response, tenant: TenantDep, session: SessionDep, clock: ClockDep
) -> JobPublic:
    """Queued: canceled now (200). Running: cancel requested (202). Ended: 409.

    A job canceled here gets its callback like any other ended job."""
    job = get_tenant_job(session, tenant.id, job_id, lock=True)
    if job.status in TERMINAL_STATUSES:
        raise ApiError(
            409,
            "job_finished",
            f"job {job.id} has already ended ({job.status.value}); nothing to cancel",
        )
    job.cancel_requested = True
    if job.status == JobStatus.queued:
        job.status = JobStatus.canceled
        job.finished_at = clock()
        for column, value in callback_due_values(job.callback_url).items():
            setattr(job, column, value)  # a runner's callback dispatcher delivers it
    else:
        response.status_code = status.HTTP_202_ACCEPTED
    session.commit()
    return JobPublic.from_job(job)


def _download_path(job_id: uuid.UUID, name: str) -> str:
    return f"/v1/jobs/{job_id}/outputs/{quote(name, safe='')}"


def _checked_output_key(job: Job, name: str) -> str:
    key = (job.outputs or {}).get(name)
    if not isinstance(key, str) or not key.startswith(job.output_prefix):
        raise ApiError(404, "not_found", f"job {job.id} has no output {name!r}")
    return key


def _require_succeeded(job: Job) -> None:
    if job.status != JobStatus.succeeded:
        raise ApiError(
            409,
            "job_not_succeeded",
            f"job {job.id} is {job.status.value}; outputs are available once it has succeeded",
        )


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={409: {"model": ErrorResponse, "description": "the job has not ended yet"}},
)
def delete_job(
    job_id: uuid.UUID, tenant: TenantDep, session: SessionDep, storage: StorageDep
) -> Response:
    """Delete an ended job (succeeded, failed or canceled) and every file under its output
    prefix. A queued or running job is a 409: cancel it first."""
    job = get_tenant_job(session, tenant.id, job_id, lock=True)
    if job.status not in TERMINAL_STATUSES:
        raise ApiError(
            409,
            "job_not_finished",
            f"job {job.id} is {job.status.value}; cancel it (POST /v1/jobs/{job.id}/cancel) "
            "and delete it once it has ended",
        )
    # files first: if storage fails, the row (and so a retry) is still there
    for key in storage.list_keys(job.output_prefix):
        storage.delete(key)
    session.delete(job)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def public_base(request: Request, settings: Settings) -> str:
    """Where clients reach this API: ``public_base_url`` if set, else the request's own base."""
    return (settings.public_base_url or str(request.base_url)).rstrip("/")


@router.get("/{job_id}/outputs", response_model=JobOutputs, responses=error_responses(409))
def job_outputs(
    job_id: uuid.UUID,
    request: Request,
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> JobOutputs:
    """Download links: presigned GETs for S3, else API download routes (send your key)."""
    job = get_tenant_job(session, tenant.id, job_id)
    _require_succeeded(job)
    links: list[OutputLink] = []
    for name in sorted(job.outputs or {}):
        key = _checked_output_key(job, name)
        url = storage.presign_get(key, settings.s3_presign_seconds)
        if url is not None:
            links.append(
                OutputLink(name=name, key=key, url=url, expires_in_s=settings.s3_presign_seconds)
            )
        else:
            base = public_base(request, settings)
            links.append(
                OutputLink(
                    name=name, key=key, url=base + _download_path(job.id, name), expires_in_s=None
                )
            )
    return JobOutputs(job_id=job.id, status=job.status, outputs=links)


@router.get(
    "/{job_id}/outputs/{name}",
    response_class=StarletteResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        307: {"description": "to S3"},
        **error_responses(409),
    },
)
def download_output(
    job_id: uuid.UUID,
    name: str,
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> Any:
    """Stream one output file (local storage) or redirect to a presigned URL (S3)."""
    job = get_tenant_job(session, tenant.id, job_id)
    _require_succeeded(job)
    key = _checked_output_key(job, unquote(name))
    url = storage.presign_get(key, settings.s3_presign_seconds)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    filename = key.rsplit("/", 1)[-1]
    uri = storage.uri(key)
    if uri.startswith("file://"):
        path = Path(unquote(urlsplit(uri).path))
        if not path.is_file():
            raise ApiError(
                404, "not_found", f"output {name!r} of job {job.id} is missing from storage"
            )
        return FileResponse(path, filename=filename, media_type="application/octet-stream")
    try:
        data = storage.get_bytes(key)
    except ObjectNotFoundError as err:
        raise ApiError(
            404, "not_found", f"output {name!r} of job {job.id} is missing from storage"
        ) from err
    return Response(
        content=data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
