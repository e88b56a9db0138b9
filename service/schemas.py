"""Request and response models, one family per resource (``JobCreate``, ``JobPublic``, ``JobsPage``, ...)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator
from pydantic_core import PydanticCustomError

from infra.models import TERMINAL_STATUSES, Batch, Job, JobPhase, JobStatus, Schedule
from service.validation import INT32_MAX, JsonTextError, check_json_tree

Preset = Literal["ultrafast", "fast", "slow"]


class _Strict(BaseModel):
    """Request bodies: unknown fields refused, no coercion of strings into numbers or booleans
    (``strict`` on those fields), and every value storable (``service.validation``)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        try:
            check_json_tree(data)
        except JsonTextError as err:
            raise PydanticCustomError(
                "unstorable_value", "{problem}", {"field": err.field, "problem": err.problem}
            ) from err
        return data


# ---------------------------------------------------------------- errors


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorInfo(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. validation_error")
    message: str = Field(description="what was wrong and what to do")
    details: list[ErrorDetail] | None = None


class ErrorResponse(BaseModel):
    """The one shape of every error answer (``service.errors``)."""

    error: ErrorInfo


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses."""
    meaning = {
        400: "malformed request (JSON that does not parse, a cursor this API did not return)",
        401: "missing, invalid or revoked API key",
        403: "not allowed from this client",
        404: "no such resource for this tenant",
        409: "conflicts with the resource's state or with an earlier Idempotency-Key",
        413: "request body over the size limit",
        415: "wrong content type",
        422: "a field is invalid; details name each one",
        503: "the database is busy or unreachable; retry after Retry-After seconds",
    }
    return {code: {"model": ErrorResponse, "description": meaning[code]} for code in codes}


# ------------------------------------------------------------------ me


class TenantLimits(BaseModel):
    max_upload_bytes: int
    max_request_json_bytes: int
    max_user_metadata_bytes: int
    max_batch_inputs: int
    max_input_frames: int
    max_input_pixels: int
    max_input_seconds: float


class MePublic(BaseModel):
    """Who the key belongs to and where its files live."""

    tenant_id: uuid.UUID
    tenant_name: str
    storage_prefix: str = Field(description="tenants/<id>/: every key of yours starts with it")
    storage_uri: str | None = Field(
        description="s3://<bucket>/tenants/<id>/ with S3 storage (use it as a batch or schedule "
        "input_prefix); null with local storage"
    )
    uploads_prefix: str
    limits: TenantLimits


# ------------------------------------------------------------------ jobs


class JobOptions(_Strict):
    """How to encode: shared by single jobs, batches and schedule templates."""

    preset: Preset = Field(default="fast", description="encoder preset: fast or slow")
    quality: int = Field(
        default=5, ge=1, le=10, strict=True, description="1 (smallest) .. 10 (best)"
    )
    gop: int = Field(
        default=30, ge=1, le=600, strict=True, description="frames per group of pictures"
    )
    enhance: bool = Field(
        default=False,
        strict=True,
        description=(
            "send the post-decoding enhancer (codec/enhance: a per-GOP least-squares filter, "
            "kept where it pays); report.json gives quality with and without it"
        ),
    )
    target_psnr: float | None = Field(
        default=None,
        ge=10.0,
        le=99.0,
        strict=True,
        allow_inf_nan=False,
        description=(
            "target-quality mode: each GOP searches quality levels 1..10 (starting at `quality`) "
            "for the lowest rate whose mean RGB PSNR lands in [target, target + 0.5] dB; a "
            "target out of reach is reported in report.json `target`, not an error"
        ),
    )
    target_msssim: float | None = Field(
        default=None,
        ge=0.5,
        le=0.9999,
        strict=True,
        allow_inf_nan=False,
        description=(
            "target-quality mode by mean MS-SSIM (SSIM for frames under 161 px); the band is "
            "0.5 dB of -10 log10(1 - MS-SSIM); at most one of target_psnr and target_msssim"
        ),
    )
    priority: int = Field(default=0, ge=-50, le=50, strict=True, description="higher runs first")
    max_frames: int | None = Field(
        default=None,
        ge=1,
        le=INT32_MAX,
        strict=True,
        description="encode at most this many frames",
    )
    output_prefix: str | None = Field(
        default=None,
        max_length=200,
        description="a label for the outputs; storage keys are always built from ids",
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="your data, returned as is")
    callback_url: HttpUrl | None = Field(
        default=None,
        description="http(s) URL POSTed when the job ends; its host must be publicly routable "
        "(no loopback, private or link-local addresses unless the operator allows them) and "
        "the URL may not carry a user name or password",
    )

    @model_validator(mode="after")
    def _one_target(self) -> JobOptions:
        if self.target_psnr is not None and self.target_msssim is not None:
            raise ValueError("give at most one of target_psnr and target_msssim")
        return self

    def job_fields(self) -> dict[str, Any]:
        """The :class:`~infra.models.Job` columns these options set."""
        return {
            "preset": self.preset,
            "quality": self.quality,
            "gop": self.gop,
            "enhance": self.enhance,
            "target_psnr": self.target_psnr,
            "target_msssim": self.target_msssim,
            "priority": self.priority,
            "max_frames": self.max_frames,
            "output_label": self.output_prefix,
            "user_metadata": self.metadata,
            "callback_url": str(self.callback_url) if self.callback_url is not None else None,
        }


class JobCreate(JobOptions):
    input: str = Field(
        min_length=1,
        max_length=4096,
        description="an uploaded key (tenants/<id>/uploads/...), s3://bucket/key, or a file path "
        "under an allowed root",
    )


class JobTemplate(JobOptions):
    """Options for every job a batch or a schedule creates."""


class JobError(BaseModel):
    code: str
    message: str | None


class JobPublic(BaseModel):
    id: uuid.UUID
    status: JobStatus
    phase: JobPhase | None = Field(description="what a running job is doing; null otherwise")
    progress_percent: float = Field(
        description="0..100: each phase starts at a fixed point, encoding moves with the frames "
        "encoded (frames of GOPs still being encoded count too); 100 once succeeded"
    )
    input: str
    preset: str
    quality: int
    gop: int
    enhance: bool
    target_psnr: float | None
    target_msssim: float | None
    priority: int
    max_frames: int | None
    output_prefix: str
    output_label: str | None
    metadata: dict[str, Any]
    callback_url: str | None
    callback_status: str | None = Field(
        description="pending, delivered, failed (tries used up or rejected by the receiver) "
        "or refused (not a public address); null without a callback_url"
    )
    callback_attempts: int = Field(description="callback tries so far")
    callback_error: str | None = Field(description="what the last failed callback try got")
    idempotency_key: str | None
    batch_id: uuid.UUID | None
    schedule_id: uuid.UUID | None
    gops_total: int | None
    gops_done: int
    frames_total: int | None = Field(description="frames the job encodes; null until probed")
    frames_done: int = Field(
        description="frames encoded so far, partly encoded GOPs included (updated about once "
        "a second while encoding)"
    )
    attempts: int
    max_attempts: int
    cancel_requested: bool
    error: JobError | None
    outputs: dict[str, str]
    report: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_job(cls, job: Job) -> JobPublic:
        return cls(
            id=job.id,
            status=job.status,
            phase=None if job.status in TERMINAL_STATUSES else job.phase,
            progress_percent=job_progress_percent(job),
            input=job.input_uri,
            preset=job.preset,
            quality=job.quality,
            gop=job.gop,
            enhance=job.enhance,
            target_psnr=job.target_psnr,
            target_msssim=job.target_msssim,
            priority=job.priority,
            max_frames=job.max_frames,
            output_prefix=job.output_prefix,
            output_label=job.output_label,
            metadata=job.user_metadata or {},
            callback_url=job.callback_url,
            callback_status=job.callback_status,
            callback_attempts=job.callback_attempts or 0,
            callback_error=job.callback_error,
            idempotency_key=job.idempotency_key,
            batch_id=job.batch_id,
            schedule_id=job.schedule_id,
            gops_total=job.gops_total,
            gops_done=job.gops_done,
            frames_total=job.frames_total,
            frames_done=job.frames_done or 0,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            cancel_requested=job.cancel_requested,
            error=JobError(code=job.error_code, message=job.error_message)
            if job.error_code
            else None,
            outputs={str(k): str(v) for k, v in (job.outputs or {}).items()},
            report=job.report or {},
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


# where each phase starts on the 0..100 progress scale; encoding spans ENCODING_START ..
# PHASE_START["assembling"] in proportion to the work done (frames encoded, or GOPs done for
# rows without a frame count), so a job moves through every phase and within a GOP (a one-GOP
# job too) and never goes backwards
PHASE_START: dict[JobPhase, float] = {
    JobPhase.probing: 0.0,
    JobPhase.encoding: 5.0,
    JobPhase.assembling: 90.0,
    JobPhase.verifying: 93.0,
    JobPhase.uploading: 97.0,
}


def done_share(
    gops_done: int, gops_total: int | None, frames_done: int, frames_total: int | None
) -> float:
    """0..1: the larger of frames encoded over frames and GOPs done over GOPs (the frame count
    is written throttled, so it may lag a GOP that just finished; rows before migration 0005
    have GOPs only)."""
    gops = min(1.0, gops_done / gops_total) if gops_total else 0.0
    frames = min(1.0, frames_done / frames_total) if frames_total else 0.0
    return max(gops, frames)


def progress_percent(
    status: JobStatus,
    phase: JobPhase | None,
    gops_done: int,
    gops_total: int | None,
    frames_done: int = 0,
    frames_total: int | None = None,
) -> float:
    """100 when succeeded; while running, the phase's start, plus within encoding the share of
    work done (:func:`done_share`); else (queued, failed, canceled) that share, as far as it
    got."""
    encode_span = PHASE_START[JobPhase.assembling] - PHASE_START[JobPhase.encoding]
    share = done_share(gops_done, gops_total, frames_done, frames_total)
    if status == JobStatus.succeeded:
        return 100.0
    if status == JobStatus.running and phase is not None:
        if phase == JobPhase.encoding:
            return round(PHASE_START[phase] + encode_span * share, 1)
        return PHASE_START[phase]
    return round(100.0 * share, 1)


def job_progress_percent(job: Job) -> float:
    return progress_percent(
        job.status, job.phase, job.gops_done, job.gops_total, job.frames_done or 0, job.frames_total
    )


class JobsPage(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next page; null at the end"
    )


class OutputLink(BaseModel):
    name: str
    key: str
    url: str
    expires_in_s: int | None = Field(description="null for API download links (they need your key)")


class JobOutputs(BaseModel):
    job_id: uuid.UUID
    status: JobStatus
    outputs: list[OutputLink]


# --------------------------------------------------------------- uploads


class UploadPublic(BaseModel):
    key: str = Field(description="use as a job's input")
    size_bytes: int
    sha256: str
    filename: str | None


class PresignedUploadCreate(_Strict):
    filename: str | None = Field(
        default=None, max_length=255, description="only its extension is used"
    )
    size_bytes: int | None = Field(
        default=None,
        ge=1,
        le=2**63 - 1,
        strict=True,
        description="the file's exact size: the URL then accepts only a body of that length "
        "(at most the upload limit; larger objects are refused when submitted anyway)",
    )


class PresignedUpload(BaseModel):
    key: str = Field(description="use as a job's input once the PUT succeeded")
    url: str
    method: Literal["PUT"] = "PUT"
    expires_in_s: int
    max_bytes: int = Field(description="the upload limit: a job refuses a larger object")


# --------------------------------------------------------------- batches


class BatchCreate(_Strict):
    inputs: list[str] | None = Field(
        default=None, min_length=1, max_length=10_000, description="one job per input"
    )
    input_prefix: str | None = Field(
        default=None,
        max_length=1024,
        description="s3://bucket/tenants/<id>/... or tenants/<id>/...: one job per video under it",
    )
    job: JobTemplate = Field(default_factory=JobTemplate)

    @model_validator(mode="after")
    def _one_source(self) -> BatchCreate:
        if (self.inputs is None) == (self.input_prefix is None):
            raise ValueError("give exactly one of 'inputs' (a list) or 'input_prefix'")
        return self


class BatchPublic(BaseModel):
    id: uuid.UUID
    created_at: datetime
    source: dict[str, Any]
    total_jobs: int
    counts: dict[JobStatus, int]
    progress_percent: float = Field(description="mean progress of its jobs")
    done: bool = Field(description="every job has ended (succeeded, failed or canceled)")

    @classmethod
    def from_batch(
        cls, batch: Batch, counts: dict[JobStatus, int], progress_percent: float
    ) -> BatchPublic:
        total = sum(counts.values())
        terminal = sum(
            counts[s] for s in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)
        )
        return cls(
            id=batch.id,
            created_at=batch.created_at,
            source=batch.source,
            total_jobs=total,
            counts=counts,
            progress_percent=round(progress_percent, 1),
            done=total > 0 and terminal == total,
        )


# ------------------------------------------------------------- schedules


class ScheduleCreate(_Strict):
    cron: str = Field(
        min_length=9, max_length=200, description="5-field cron in UTC, e.g. '*/15 * * * *'"
    )
    input_prefix: str = Field(min_length=1, max_length=1024)
    job: JobTemplate = Field(default_factory=JobTemplate)


class SchedulePublic(BaseModel):
    id: uuid.UUID
    cron: str
    input_prefix: str
    job: dict[str, Any]
    next_run_at: datetime
    last_run_at: datetime | None
    created_at: datetime

    @classmethod
    def from_schedule(cls, schedule: Schedule) -> SchedulePublic:
        return cls(
            id=schedule.id,
            cron=schedule.cron,
            input_prefix=schedule.input_prefix,
            job=schedule.job_template,
            next_run_at=schedule.next_run_at,
            last_run_at=schedule.last_run_at,
            created_at=schedule.created_at,
        )


class BatchesPage(BaseModel):
    items: list[BatchPublic]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next page; null at the end"
    )


class SchedulesPublic(BaseModel):
    items: list[SchedulePublic]
    count: int


# ---------------------------------------------------------------- health


class HealthPublic(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyPublic(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str]


# -------------------------------------------------------- callback secret


class CallbackSecretPublic(BaseModel):
    """The key that signs this tenant's job callbacks (see ``workers.callbacks``)."""

    secret: str = Field(description="HMAC-SHA256 key; keep it on your receiver only")
    algorithm: Literal["hmac-sha256"] = "hmac-sha256"
    signature_header: str = Field(
        default="X-Splatpack-Signature",
        description="carries sha256=<hex HMAC of '<timestamp>.<raw body>'>",
    )
    timestamp_header: str = Field(
        default="X-Splatpack-Timestamp",
        description="Unix seconds of the try; reject old ones (replays)",
    )
