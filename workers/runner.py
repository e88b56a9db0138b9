"""The job runner: claim a job, keep its lease alive, run the pipeline, record the outcome.

Claiming takes one row with ``SELECT ... FOR UPDATE SKIP LOCKED`` (priority
desc, then oldest first) among queued jobs and running jobs whose lease has
expired (their runner died), sets ``lease_owner`` / ``lease_expires_at`` and
counts the attempt. A heartbeat thread renews the lease every
``heartbeat_seconds`` and notices ``cancel_requested``. Every write the
runner makes while working is fenced by ``lease_owner``: if another runner
took the job over, the first one stops without touching the row.

Outcomes: success -> ``succeeded`` with outputs and report; a user-facing
problem (bad input, bad config) -> ``failed`` at once with its code; any other
error -> back to ``queued`` while attempts remain, else ``failed`` with the last
error; cancel -> ``canceled`` (running Ray tasks are force-cancelled);
runner shutdown -> back to ``queued`` without spending an attempt.

Terminal jobs with a ``callback_url`` get a callback: the transaction that ends
the job also marks its callback due (``infra.jobs.callback_due_values``), and
the runner's callback dispatcher thread (``workers.callback_dispatch``, started
by ``run_forever``) delivers it, so a slow or dead receiver never holds up the
next job, and a due callback outlives a runner crash (any runner's dispatcher
picks it up).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from infra.jobs import callback_due_values
from infra.models import TERMINAL_STATUSES, Job, JobGop, JobPhase, JobStatus
from workers.assemble import GopRecord
from workers.callback_dispatch import CallbackDispatcher
from workers.callbacks import CallbackDelivery
from workers.gops import GopResult, gops_prefix
from workers.inputs import JobError
from workers.pipeline import (
    JobCanceled,
    JobInterrupted,
    JobSpec,
    LeaseLost,
    PipelineOutcome,
    run_pipeline,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from infra.settings import Settings
    from infra.storage import Storage

log = logging.getLogger("splatpack.runner")


def default_worker_id() -> str:
    """``host:pid:random`` - unique per runner instance."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobHandle:
    """The running job's row, as seen by its lease owner (implements ``JobControl``)."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        job_id: uuid.UUID,
        worker_id: str,
        settings: Settings,
        stopping: threading.Event,
    ) -> None:
        self.session_factory = session_factory
        self.job_id = job_id
        self.worker_id = worker_id
        self.settings = settings
        self.canceled = threading.Event()
        self.lost = threading.Event()
        self.stopping = stopping
        self._hb_stop = threading.Event()
        self._hb_thread: threading.Thread | None = None
        self._frames_written: tuple[int, int] | None = None  # (done, total) last written
        self._frames_written_at = 0.0

    # fencing -----------------------------------------------------------------
    def _owned(self) -> Any:
        return and_(
            Job.id == self.job_id,
            Job.lease_owner == self.worker_id,
            Job.status == JobStatus.running,
        )

    def _lease_until(self) -> Any:
        return func.now() + timedelta(seconds=self.settings.lease_seconds)

    def _update(self, **values: Any) -> None:
        with self.session_factory.begin() as s:
            res = s.execute(update(Job).where(self._owned()).values(**values))
            if res.rowcount != 1:  # type: ignore[attr-defined]
                self.lost.set()
                raise LeaseLost(f"job {self.job_id} is no longer leased to {self.worker_id}")

    # heartbeat ---------------------------------------------------------------
    def beat(self) -> None:
        """Renew the lease once and pick up a cancel request."""
        with self.session_factory.begin() as s:
            row = s.execute(
                update(Job)
                .where(self._owned())
                .values(lease_expires_at=self._lease_until())
                .returning(Job.cancel_requested)
            ).first()
        if row is None:
            self.lost.set()
        elif row[0]:
            self.canceled.set()

    def _heartbeat_loop(self) -> None:
        while not self._hb_stop.wait(self.settings.heartbeat_seconds):
            try:
                self.beat()
            except Exception:
                log.exception("job %s: heartbeat failed", self.job_id)
            if self.lost.is_set():
                return

    def start_heartbeat(self) -> None:
        self._hb_thread = threading.Thread(
            target=self._heartbeat_loop, name=f"heartbeat-{self.job_id}", daemon=True
        )
        self._hb_thread.start()

    def stop_heartbeat(self) -> None:
        self._hb_stop.set()
        if self._hb_thread is not None:
            self._hb_thread.join(timeout=30)

    # JobControl --------------------------------------------------------------
    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(f"job {self.job_id}: lease lost")
        if self.canceled.is_set():
            raise JobCanceled(f"job {self.job_id}: cancel requested")
        if self.stopping.is_set():
            raise JobInterrupted(f"job {self.job_id}: runner shutting down")

    def set_phase(self, phase: JobPhase) -> None:
        self._update(phase=phase, lease_expires_at=self._lease_until())

    def set_gops_total(self, total: int) -> None:
        self._update(gops_total=total)

    def report_frames(self, done: int, total: int, *, force: bool = False) -> None:
        """Write ``frames_done`` / ``frames_total`` when they changed, at most once per
        ``settings.progress_write_seconds`` unless ``force`` (a GOP finished, the phase ends)."""
        values = (done, total)
        now = time.monotonic()
        if values == self._frames_written:
            return
        if not force and now - self._frames_written_at < self.settings.progress_write_seconds:
            return
        self._update(frames_done=done, frames_total=total)
        self._frames_written, self._frames_written_at = values, now

    def done_gops(self) -> list[GopRecord]:
        with self.session_factory() as s:
            rows = s.scalars(
                select(JobGop).where(JobGop.job_id == self.job_id).order_by(JobGop.gop_index)
            ).all()
            return [
                GopRecord(
                    r.gop_index,
                    r.first_frame,
                    r.n_frames,
                    r.payload_key,
                    r.payload_bytes,
                    r.psnr_db,
                    r.encode_seconds,
                    target=r.target,
                )
                for r in rows
            ]

    def record_gop(self, result: GopResult) -> int:
        with self.session_factory.begin() as s:
            owned = s.execute(select(Job.id).where(self._owned()).with_for_update()).first()
            if owned is None:
                self.lost.set()
                raise LeaseLost(f"job {self.job_id} is no longer leased to {self.worker_id}")
            values = {
                "first_frame": result.first_frame,
                "n_frames": result.n_frames,
                "payload_key": result.key,
                "payload_bytes": result.payload_bytes,
                "psnr_db": result.psnr_db,
                "encode_seconds": result.encode_seconds,
                "target": result.target,
            }
            stmt = pg_insert(JobGop).values(job_id=self.job_id, gop_index=result.index, **values)
            stmt = stmt.on_conflict_do_update(
                index_elements=[JobGop.job_id, JobGop.gop_index],
                set_={**values, "attempts": JobGop.attempts + 1},
            )
            s.execute(stmt)
            done, frames = s.execute(
                select(func.count(), func.coalesce(func.sum(JobGop.n_frames), 0)).where(
                    JobGop.job_id == self.job_id
                )
            ).one()
            # frames of finished GOPs count at once, before the throttled report_frames
            s.execute(
                update(Job)
                .where(Job.id == self.job_id)
                .values(gops_done=done, frames_done=func.greatest(Job.frames_done, frames))
            )
            return int(done or 0)


@dataclass
class ClaimedJob:
    spec: JobSpec
    attempts: int
    max_attempts: int


class Runner:
    """Claims and runs jobs one at a time (GOPs fan out on Ray); its ``dispatcher`` delivers
    due callbacks beside it."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        storage: Storage,
        worker_id: str | None = None,
        callbacks: CallbackDelivery | None = None,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.storage = storage
        self.worker_id = worker_id or default_worker_id()
        self.callbacks = callbacks or CallbackDelivery.from_settings(settings)
        self.dispatcher = CallbackDispatcher.from_settings(
            settings, session_factory, self.callbacks
        )
        self.stopping = threading.Event()

    # claiming ----------------------------------------------------------------
    def claim(self) -> ClaimedJob | None:
        """Lease the next job, or return None when there is nothing to do.

        Jobs past ``max_attempts`` or with a cancel request are finished here
        (failed / canceled) and not returned; the claim loop then moves on.
        """
        while True:
            claimed, terminal_id = self._claim_one()
            if terminal_id is not None:
                self._after_terminal(terminal_id)
                continue
            return claimed

    def _claim_one(self) -> tuple[ClaimedJob | None, uuid.UUID | None]:
        with self.session_factory.begin() as s:
            job = s.scalars(
                select(Job)
                .where(
                    or_(
                        Job.status == JobStatus.queued,
                        and_(Job.status == JobStatus.running, Job.lease_expires_at < func.now()),
                    )
                )
                .order_by(Job.priority.desc(), Job.created_at, Job.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if job is None:
                return None, None
            expired_run = job.status == JobStatus.running
            attempts, max_attempts = job.attempts, job.max_attempts
            spec = JobSpec.from_row(job)
            by_id = update(Job).where(Job.id == job.id).execution_options(synchronize_session=False)
            if job.cancel_requested:
                s.execute(by_id.values(**self._terminal_values(job, JobStatus.canceled)))
                return None, spec.id
            if attempts >= max_attempts:
                last = job.error_message or (
                    "the runner working on it stopped (crashed or was killed)"
                    if expired_run
                    else "no error recorded"
                )
                s.execute(
                    by_id.values(
                        error_code=job.error_code or "too_many_attempts",
                        error_message=f"gave up after {attempts} attempts; last error: {last}",
                        **self._terminal_values(job, JobStatus.failed),
                    )
                )
                return None, spec.id
            s.execute(
                by_id.values(
                    attempts=Job.attempts + 1,
                    status=JobStatus.running,
                    lease_owner=self.worker_id,
                    lease_expires_at=func.now() + timedelta(seconds=self.settings.lease_seconds),
                    started_at=func.coalesce(Job.started_at, func.now()),
                )
            )
            if expired_run:
                log.warning(
                    "job %s: lease expired, taking over (attempt %d)", spec.id, attempts + 1
                )
            return ClaimedJob(spec, attempts + 1, max_attempts), None

    @staticmethod
    def _terminal_values(job: Job, status: JobStatus) -> dict[str, Any]:
        return {
            "status": status,
            "phase": None,  # an ended job is in no phase
            "finished_at": func.now(),
            "lease_owner": None,
            "lease_expires_at": None,
            **callback_due_values(job.callback_url),
        }

    # running -----------------------------------------------------------------
    def run_once(self) -> bool:
        """Claim and run one job; False when the queue had nothing to claim."""
        claimed = self.claim()
        if claimed is None:
            return False
        self.run_claimed(claimed)
        return True

    def run_forever(self, stop_event: threading.Event | None = None) -> None:
        """Work until ``stop_event`` is set (a running job is handed back to the queue),
        with the callback dispatcher running in its own thread meanwhile."""
        stop = stop_event or threading.Event()
        self.stopping.clear()
        watcher = threading.Thread(target=self._watch_stop, args=(stop,), daemon=True)
        watcher.start()
        self.dispatcher.start()
        log.info("runner %s started", self.worker_id)
        try:
            while not stop.is_set():
                try:
                    worked = self.run_once()
                except Exception:
                    log.exception("runner %s: claim loop error", self.worker_id)
                    worked = False
                if not worked:
                    stop.wait(self.settings.poll_seconds)
        finally:
            # a try cut off here is due again when its claim's lease runs out
            self.dispatcher.stop(timeout_s=self.callbacks.timeout_s)
        log.info("runner %s stopped", self.worker_id)

    def _watch_stop(self, stop: threading.Event) -> None:
        stop.wait()
        self.stopping.set()

    def run_claimed(self, claimed: ClaimedJob) -> None:
        job_id = claimed.spec.id
        handle = JobHandle(
            self.session_factory, job_id, self.worker_id, self.settings, self.stopping
        )
        scratch = Path(self.settings.data_dir) / "scratch" / f"{job_id}-{uuid.uuid4().hex[:8]}"
        scratch.mkdir(parents=True, exist_ok=True)
        handle.start_heartbeat()
        try:
            outcome = run_pipeline(claimed.spec, handle, self.settings, self.storage, scratch)
        except LeaseLost:
            log.warning("job %s: lease lost to another runner; dropping it", job_id)
            return
        except JobCanceled:
            self._end(handle, JobStatus.canceled)
        except JobInterrupted:
            self._requeue(handle, refund_attempt=True)
        except JobError as exc:
            log.info("job %s: %s: %s", job_id, exc.code, exc.message)
            if exc.retryable and claimed.attempts < claimed.max_attempts:
                self._requeue(handle, code=exc.code, message=exc.message)
            else:
                self._end(handle, JobStatus.failed, code=exc.code, message=exc.message)
        except Exception as exc:
            log.exception("job %s: attempt %d failed", job_id, claimed.attempts)
            code = "internal_error"
            message = _describe(exc)
            from workers.tasks import GopTaskError

            if isinstance(exc, GopTaskError):
                code = "gop_failed"
                if not exc.retryable:
                    self._end(handle, JobStatus.failed, code=code, message=message)
                    return
            if claimed.attempts < claimed.max_attempts:
                self._requeue(handle, code=code, message=message)
            else:
                self._end(
                    handle,
                    JobStatus.failed,
                    code=code,
                    message=f"gave up after {claimed.attempts} attempts; last error: {message}",
                )
        else:
            self._end(handle, JobStatus.succeeded, outcome=outcome)
        finally:
            handle.stop_heartbeat()
            shutil.rmtree(scratch, ignore_errors=True)

    def _requeue(
        self,
        handle: JobHandle,
        *,
        code: str | None = None,
        message: str | None = None,
        refund_attempt: bool = False,
    ) -> None:
        values: dict[str, Any] = {
            "status": JobStatus.queued,
            "phase": None,
            "lease_owner": None,
            "lease_expires_at": None,
        }
        if code is not None:
            values["error_code"] = code
            values["error_message"] = self._public(message)
        if refund_attempt:
            values["attempts"] = Job.attempts - 1
        try:
            handle._update(**values)
        except LeaseLost:
            log.warning("job %s: lease lost before re-queueing", handle.job_id)

    def _end(
        self,
        handle: JobHandle,
        status: JobStatus,
        *,
        code: str | None = None,
        message: str | None = None,
        outcome: PipelineOutcome | None = None,
    ) -> None:
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"{status} is not a terminal status")
        with self.session_factory.begin() as s:
            job = s.scalars(select(Job).where(handle._owned()).with_for_update()).first()
            if job is None:
                log.warning("job %s: lease lost before recording %s", handle.job_id, status.value)
                return
            values = self._terminal_values(job, status)
            if status == JobStatus.succeeded and outcome is not None:
                values.update(
                    outputs=outcome.outputs,
                    report=outcome.report,
                    error_code=None,
                    error_message=None,
                )
            elif code is not None:
                values.update(error_code=code, error_message=self._public(message))
            s.execute(
                update(Job)
                .where(Job.id == job.id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
        self._after_terminal(handle.job_id)

    def _public(self, message: str | None) -> str | None:
        """``message`` without this server's paths (scratch files, local storage): each path
        under them is cut to its file name."""
        if message is None:
            return None
        roots = {
            str(Path(self.settings.data_dir).absolute()),
            str(Path(self.settings.data_dir).resolve()),
            str(Path(self.settings.resolved_storage_root).absolute()),
        }
        return redact_paths(message, roots)

    def _after_terminal(self, job_id: uuid.UUID) -> None:
        """Best effort: drop the per-GOP payloads; nudge the dispatcher (the callback, if any,
        was made due with the terminal status)."""
        with self.session_factory() as s:
            job = s.get(Job, job_id)
            if job is None:
                return
            prefix = job.output_prefix
        try:
            for key in self.storage.list_keys(gops_prefix(prefix)):
                self.storage.delete(key)
        except Exception:
            log.exception("job %s: could not delete GOP payloads", job_id)
        self.dispatcher.wake()


def redact_paths(text: str, roots: set[str]) -> str:
    """``text`` with every path under one of ``roots`` replaced by its last component."""
    for root in sorted((r.rstrip("/") for r in roots if r.strip("/")), key=len, reverse=True):
        pattern = re.compile(re.escape(root) + r"(/[^\s'\"),;]*)?")
        text = pattern.sub(lambda m: Path(m.group(0)).name or "<server path>", text)
    return text


def _describe(exc: BaseException) -> str:
    """One line a user can read: the exception's type and message, bounded."""
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 2000 else text[:2000] + "..."
