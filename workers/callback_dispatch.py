"""The durable callback queue: deliver due job callbacks without holding up any runner.

The queue is the ``jobs`` table itself. Whatever ends a job (the runner, the
API's cancel) sets ``callback_status = 'pending'``, ``callback_attempts = 0`` and
``callback_next_at = now()`` in the same transaction as the terminal status
(``infra.jobs.callback_due_values``), so no crash can lose a due callback.

A :class:`CallbackDispatcher` (a thread in every runner, started by
``Runner.run_forever``) loops:

1. claim: in one short transaction, take up to ``batch_size`` pending rows whose
   ``callback_next_at`` has come (``FOR UPDATE SKIP LOCKED``, oldest due first),
   count the try (``callback_attempts + 1``) and push ``callback_next_at`` to
   ``now + lease_s``. That is the claim's lease: if this runner dies mid-try, the
   row is due again when it runs out and any other dispatcher takes it. No
   transaction is held open during HTTP.
2. try each in its own thread (``CallbackDelivery.attempt``: SSRF-checked, pinned,
   signed with the tenant's ``callback_secret``); at most ``batch_size`` tries are in
   flight, and a finished one's slot is refilled at once, so a hanging receiver
   holds up one slot, never the runner or the other callbacks.
3. record, fenced on the claimed ``callback_attempts`` (a dispatcher whose lease ran
   out and was taken over writes nothing): ``delivered``, ``refused`` and ``failed``
   are final; a transient failure is due again after
   ``min(max_delay_s, base_delay_s * 2**(tries - 1))``, until ``max_tries`` tries
   make it ``failed``. ``callback_error`` keeps what the last try got.

Only the callback columns are written: a callback never changes its job's status.
Delivery is at least once (a try that outlives its lease may be repeated).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import DateTime, func, literal, select, update

from infra.models import Job, Tenant
from workers.callbacks import (
    DELIVERED,
    FAILED,
    PENDING,
    RETRY,
    CallbackDelivery,
    TryResult,
    job_payload,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from infra.settings import Settings

log = logging.getLogger("splatpack.callbacks")

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class DueCallback:
    """A claimed callback: what to send, where, signed with which secret, and which try."""

    job_id: uuid.UUID
    url: str
    payload: dict[str, Any]
    secret: str
    attempt: int  # 1-based; the fence for recording its result


class CallbackDispatcher:
    """Claims due callbacks from the database, delivers them, records the outcome.

    ``clock`` (tests): a timezone-aware "now" used instead of the database's ``now()``
    for due times, leases and backoff.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        delivery: CallbackDelivery,
        *,
        lease_s: float = 60.0,
        poll_s: float = 1.0,
        batch_size: int = 4,
        clock: Clock | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.delivery = delivery
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.batch_size = batch_size
        self.clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition()  # guards _in_flight; notified when a try ends
        self._in_flight = 0

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        session_factory: sessionmaker[Session],
        delivery: CallbackDelivery | None = None,
        *,
        clock: Clock | None = None,
    ) -> CallbackDispatcher:
        """A dispatcher with the operator's ``callback_*`` settings."""
        return cls(
            session_factory,
            delivery or CallbackDelivery.from_settings(settings),
            lease_s=settings.callback_lease_seconds,
            poll_s=settings.callback_poll_seconds,
            batch_size=settings.callback_concurrency,
            clock=clock,
        )

    # time ----------------------------------------------------------------------
    def _at(self, offset_s: float = 0.0) -> Any:
        """SQL for now (the clock's, else the database's) plus ``offset_s`` seconds."""
        if self.clock is None:
            return func.now() + timedelta(seconds=offset_s)
        return literal(self.clock() + timedelta(seconds=offset_s), DateTime(timezone=True))

    # one pass ------------------------------------------------------------------
    def claim(self, limit: int | None = None) -> list[DueCallback]:
        """Lease up to ``limit`` (default ``batch_size``) due callbacks, counting their try."""
        with self.session_factory.begin() as s:
            rows = s.execute(
                select(Job, Tenant.callback_secret)
                .join(Tenant, Tenant.id == Job.tenant_id)
                .where(Job.callback_status == PENDING, Job.callback_next_at <= self._at())
                .order_by(Job.callback_next_at, Job.id)
                .limit(limit or self.batch_size)
                .with_for_update(of=Job, skip_locked=True)
            ).all()
            claimed: list[DueCallback] = []
            for job, secret in rows:
                by_id = update(Job).where(Job.id == job.id)
                if not job.callback_url:  # nothing to send: end it rather than retry forever
                    s.execute(
                        by_id.values(
                            callback_status=FAILED,
                            callback_next_at=None,
                            callback_error="the job has no callback_url",
                        ).execution_options(synchronize_session=False)
                    )
                    continue
                attempt = job.callback_attempts + 1
                s.execute(
                    by_id.values(
                        callback_attempts=attempt, callback_next_at=self._at(self.lease_s)
                    ).execution_options(synchronize_session=False)
                )
                claimed.append(
                    DueCallback(job.id, job.callback_url, job_payload(job), secret, attempt)
                )
            return claimed

    def deliver(self, due: DueCallback) -> str:
        """Try ``due`` once and record the result; returns the callback's status now."""
        try:
            result = self.delivery.attempt(due.url, due.payload, secret=due.secret)
        except Exception as exc:  # never let one callback break the loop
            log.exception("job %s: callback try crashed", due.job_id)
            result = TryResult(RETRY, f"{type(exc).__name__}: {exc}"[:500])
        return self.record(due, result)

    def record(self, due: DueCallback, result: TryResult) -> str:
        """Write the outcome of ``due``'s try (only while it is still this claim's)."""
        values: dict[str, Any] = {"callback_error": None, "callback_next_at": None}
        if result.outcome == RETRY and due.attempt < self.delivery.max_tries:
            status = PENDING
            values["callback_next_at"] = self._at(self.delivery.backoff_s(due.attempt))
        else:
            status = FAILED if result.outcome == RETRY else result.outcome
        if status != DELIVERED:
            values["callback_error"] = result.detail
        with self.session_factory.begin() as s:
            res = s.execute(
                update(Job)
                .where(
                    Job.id == due.job_id,
                    Job.callback_status == PENDING,
                    Job.callback_attempts == due.attempt,
                )
                .values(callback_status=status, **values)
                .execution_options(synchronize_session=False)
            )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            log.warning("job %s: callback try %d was taken over", due.job_id, due.attempt)
            return PENDING
        log.info(
            "job %s: callback try %d: %s -> %s", due.job_id, due.attempt, result.detail, status
        )
        return status

    def run_once(self) -> int:
        """Claim one batch of due callbacks and try each (in parallel, waiting for all); how
        many were tried."""
        threads = [self._start_try(due) for due in self.claim()]
        for thread in threads:
            thread.join()
        return len(threads)

    def _start_try(self, due: DueCallback) -> threading.Thread:
        with self._idle:
            self._in_flight += 1
        thread = threading.Thread(
            target=self._try_and_release, args=(due,), name=f"callback-{due.job_id}", daemon=True
        )
        thread.start()
        return thread

    def _try_and_release(self, due: DueCallback) -> None:
        try:
            self.deliver(due)
        except Exception:  # recording failed (database gone): due again after the lease
            log.exception("job %s: could not record callback try %d", due.job_id, due.attempt)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()
            self._wake.set()  # a slot is free

    # the loop ------------------------------------------------------------------
    def wake(self) -> None:
        """Look for due callbacks now (a job just ended) instead of at the next poll."""
        self._wake.set()

    def run_forever(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set, keeping up to ``batch_size`` tries in flight: a slot
        freed by one try is refilled at once, so a hanging receiver holds one slot, not the
        queue. Waits ``poll_s`` (or a :meth:`wake`) when there is nothing to start."""
        while not stop.is_set():
            self._wake.clear()
            with self._idle:
                free = self.batch_size - self._in_flight
            started = 0
            if free > 0:
                try:
                    batch = self.claim(free)
                except Exception:
                    log.exception("callback dispatcher: claim failed")
                    batch = []
                for due in batch:
                    self._start_try(due)
                started = len(batch)
            if not started:
                self._wake.wait(self.poll_s)

    def start(self) -> None:
        """Run :meth:`run_forever` in a daemon thread until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run_forever, args=(self._stop,), name="callback-dispatcher", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop claiming, and wait up to ``timeout_s`` for tries in flight (a try cut off
        by the process ending is due again when its claim's lease runs out)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout_s)
