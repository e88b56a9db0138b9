"""/v1/schedules: cron schedules that submit new videos under a prefix."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from infra.models import Schedule
from service.auth import TenantDep
from service.deps import ClockDep, SessionDep, SettingsDep
from service.errors import ApiError, not_found
from service.inputs import InputError, normalize_prefix
from service.routers.jobs import check_options
from service.scheduler import next_run_after, validate_cron
from service.schemas import ScheduleCreate, SchedulePublic, SchedulesPublic

router = APIRouter(prefix="/schedules", tags=["schedules"])

MAX_SCHEDULES_LISTED = 1000


def get_tenant_schedule(session: Session, tenant_id: uuid.UUID, schedule_id: uuid.UUID) -> Schedule:
    schedule = session.scalars(
        select(Schedule).where(Schedule.id == schedule_id, Schedule.tenant_id == tenant_id)
    ).first()
    if schedule is None:
        raise not_found("schedule", schedule_id)
    return schedule


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SchedulePublic)
def create_schedule(
    body: ScheduleCreate,
    response: Response,
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
) -> SchedulePublic:
    """The first run (at the next cron time) takes every video already under the prefix."""
    try:
        cron = validate_cron(body.cron)
    except ValueError as err:
        raise ApiError(422, "invalid_cron", f"cron: {err}") from err
    try:
        prefix = normalize_prefix(body.input_prefix, tenant_id=tenant.id, settings=settings)
    except InputError as err:
        raise ApiError(422, "invalid_input", f"input_prefix: {err}") from err
    check_options(body.job, settings, field="job.")
    schedule = Schedule(
        id=uuid.uuid4(),
        tenant_id=tenant.id,
        cron=cron,
        input_prefix=prefix,
        job_template=body.job.model_dump(mode="json"),
        next_run_at=next_run_after(cron, clock()),
    )
    session.add(schedule)
    session.commit()
    response.headers["Location"] = f"/v1/schedules/{schedule.id}"
    return SchedulePublic.from_schedule(schedule)


@router.get("", response_model=SchedulesPublic)
def list_schedules(tenant: TenantDep, session: SessionDep) -> SchedulesPublic:
    schedules = session.scalars(
        select(Schedule)
        .where(Schedule.tenant_id == tenant.id)
        .order_by(Schedule.created_at.desc(), Schedule.id.desc())
        .limit(MAX_SCHEDULES_LISTED)
    ).all()
    return SchedulesPublic(
        items=[SchedulePublic.from_schedule(s) for s in schedules], count=len(schedules)
    )


@router.get("/{schedule_id}", response_model=SchedulePublic)
def get_schedule(schedule_id: uuid.UUID, tenant: TenantDep, session: SessionDep) -> SchedulePublic:
    return SchedulePublic.from_schedule(get_tenant_schedule(session, tenant.id, schedule_id))


@router.delete("/{schedule_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_schedule(schedule_id: uuid.UUID, tenant: TenantDep, session: SessionDep) -> Response:
    """Stop the schedule; jobs it already created go on (their schedule_id becomes null)."""
    session.delete(get_tenant_schedule(session, tenant.id, schedule_id))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
