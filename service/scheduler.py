"""Cron schedules: due schedules turn new videos under their prefix into jobs.

``tick(session, storage, now)`` handles every schedule whose ``next_run_at`` has
come: it lists the prefix, creates a job for each video not yet submitted by this
schedule (the idempotency key ``schedule:<id>:<sha256(key)>`` makes "never twice"
a database guarantee, also across API replicas), and moves ``next_run_at`` to the
next cron time after ``now`` (missed runs are not replayed one by one: one run
picks up everything new). Schedules are locked with ``SKIP LOCKED`` so replicas
ticking at once share the work; each schedule commits on its own.

The first run of a new schedule takes every video already under the prefix.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from croniter import croniter
from croniter.croniter import CroniterError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from infra.jobs import create_or_get_job
from infra.models import Job, Schedule
from infra.settings import Settings
from infra.storage import Storage
from service.inputs import list_video_keys
from service.schemas import JobTemplate

_log = logging.getLogger(__name__)

_IN_CHUNK = 500
# cron proofs start from a leap year's first day, so '0 0 29 2 *' is seen to fire
_CRON_PROOF_START = datetime(2028, 1, 1, tzinfo=UTC)
_NEVER = datetime(9999, 1, 1, tzinfo=UTC)


def validate_cron(expression: str) -> str:
    """A 5-field cron expression (minute hour day-of-month month day-of-week), else ValueError."""
    expression = " ".join(expression.split())
    if len(expression.split(" ")) != 5 or not croniter.is_valid(expression):
        raise ValueError(
            f"cron {expression!r} is not a valid 5-field expression "
            "(minute hour day-of-month month day-of-week, in UTC), e.g. '*/15 * * * *'"
        )
    try:  # valid fields can still name a day that never comes, e.g. '0 0 31 2 *'
        next_run_after(expression, _CRON_PROOF_START)
    except (CroniterError, ValueError, OverflowError) as err:
        raise ValueError(
            f"cron {expression!r} never fires (no date matches all its fields, e.g. "
            "February 31st); check the day-of-month and month fields"
        ) from err
    return expression


def next_run_after(expression: str, after: datetime) -> datetime:
    """The first cron time strictly after ``after`` (timezone-aware, as ``after``)."""
    result: datetime = croniter(expression, after).get_next(datetime)
    return result


def schedule_idempotency_key(schedule: Schedule, input_key: str) -> str:
    return f"schedule:{schedule.id}:{hashlib.sha256(input_key.encode()).hexdigest()}"


def _already_submitted(session: Session, schedule: Schedule, keys: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(keys), _IN_CHUNK):
        chunk = keys[start : start + _IN_CHUNK]
        found.update(
            k
            for k in session.scalars(
                select(Job.idempotency_key).where(
                    Job.tenant_id == schedule.tenant_id, Job.idempotency_key.in_(chunk)
                )
            )
            if k is not None
        )
    return found


def run_schedule(
    session: Session, storage: Storage, schedule: Schedule, *, max_jobs: int, max_attempts: int
) -> list[Job]:
    """Create jobs for the new videos under one schedule's prefix (at most ``max_jobs``)."""
    template = JobTemplate.model_validate(schedule.job_template)
    inputs = list_video_keys(storage, schedule.input_prefix, schedule.tenant_id)
    keys = {schedule_idempotency_key(schedule, key): key for key in inputs}
    done = _already_submitted(session, schedule, list(keys))
    created: list[Job] = []
    for idem_key, input_key in keys.items():
        if idem_key in done:
            continue
        if len(created) >= max_jobs:
            _log.info(
                "schedule %s: %d more inputs wait for the next run",
                schedule.id,
                len(keys) - len(done) - len(created),
            )
            break
        job, is_new = create_or_get_job(
            session,
            schedule.tenant_id,
            idempotency_key=idem_key,
            input_uri=input_key,
            schedule_id=schedule.id,
            max_attempts=max_attempts,
            **template.job_fields(),
        )
        if is_new:
            created.append(job)
    return created


def tick(
    session: Session, storage: Storage, now: datetime, *, settings: Settings | None = None
) -> list[Job]:
    """Run every due schedule once; return the jobs created (committed)."""
    max_jobs = (
        settings.max_batch_inputs if settings else Settings.model_fields["max_batch_inputs"].default
    )
    max_attempts = (
        settings.max_attempts if settings else Settings.model_fields["max_attempts"].default
    )
    created: list[Job] = []
    while True:
        schedule = session.scalars(
            select(Schedule)
            .where(Schedule.next_run_at <= now)
            .order_by(Schedule.next_run_at, Schedule.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if schedule is None:
            break
        try:
            jobs = run_schedule(
                session, storage, schedule, max_jobs=max_jobs, max_attempts=max_attempts
            )
        except Exception:
            _log.exception("schedule %s failed; it runs again at its next time", schedule.id)
            session.rollback()
            schedule = session.get(Schedule, schedule.id, with_for_update=True)
            if schedule is None:
                continue
            jobs = []
        schedule.last_run_at = now
        try:
            schedule.next_run_at = next_run_after(schedule.cron, now)
        except (CroniterError, ValueError, OverflowError):  # stored before crons were proven
            _log.error("schedule %s: cron %r never fires; parking it", schedule.id, schedule.cron)
            schedule.next_run_at = _NEVER
        session.commit()
        created.extend(jobs)
    return created


async def run_scheduler_loop(
    session_factory: sessionmaker[Session],
    storage: Storage,
    clock: Callable[[], datetime],
    settings: Settings,
) -> None:
    """Call :func:`tick` every ``settings.scheduler_interval_seconds`` until cancelled."""

    def once() -> int:
        with session_factory() as session:
            return len(tick(session, storage, clock(), settings=settings))

    while True:
        try:
            created = await asyncio.to_thread(once)
            if created:
                _log.info("scheduler created %d jobs", created)
        except Exception:
            _log.exception("scheduler tick failed; retrying at the next interval")
        await asyncio.sleep(settings.scheduler_interval_seconds)
