"""Claiming jobs on a real Postgres: SKIP LOCKED, priority, leases, attempts, cancel."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, update
from sqlalchemy.orm import Session, sessionmaker

from infra.db import make_engine, make_session_factory
from infra.models import Job, JobStatus
from infra.storage import LocalStorage
from tests.workers.helpers import add_job, get_job, worker_settings
from workers.runner import JobHandle, Runner


def _runner(tmp_path: Path, db_url: str, sf: sessionmaker[Session], name: str) -> Runner:
    settings = worker_settings(tmp_path, db_url)
    return Runner(settings, sf, LocalStorage(tmp_path / "storage"), worker_id=name)


def test_racing_runners_never_claim_the_same_job(
    tmp_path: Path, db_url: str, session_factory: sessionmaker[Session], tenant_id: uuid.UUID
) -> None:
    job_ids = {add_job(session_factory, tenant_id, f"uploads/{i}.mp4") for i in range(24)}
    n_threads = 4
    barrier = threading.Barrier(n_threads)
    claims: list[tuple[str, uuid.UUID]] = []
    lock = threading.Lock()
    engines = []

    def work(i: int) -> None:
        engine = make_engine(db_url)  # its own pool: truly concurrent transactions
        engines.append(engine)
        runner = _runner(tmp_path, db_url, make_session_factory(engine), f"runner-{i}")
        barrier.wait()
        while (claimed := runner.claim()) is not None:
            with lock:
                claims.append((runner.worker_id, claimed.spec.id))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for engine in engines:
        engine.dispose()

    counts = Counter(job_id for _, job_id in claims)
    assert set(counts) == job_ids
    assert max(counts.values()) == 1  # no job handed to two runners
    for worker, job_id in claims:
        job = get_job(session_factory, job_id)
        assert job.status == JobStatus.running
        assert job.lease_owner == worker
        assert job.attempts == 1
        assert job.lease_expires_at is not None


def test_claim_order_is_priority_then_age(
    tmp_path: Path, db_url: str, session_factory: sessionmaker[Session], tenant_id: uuid.UUID
) -> None:
    old_low = add_job(session_factory, tenant_id, "a", priority=0)
    time.sleep(0.01)
    high = add_job(session_factory, tenant_id, "b", priority=10)
    time.sleep(0.01)
    new_low = add_job(session_factory, tenant_id, "c", priority=0)
    runner = _runner(tmp_path, db_url, session_factory, "r")
    order = []
    while (claimed := runner.claim()) is not None:
        order.append(claimed.spec.id)
    assert order == [high, old_low, new_low]


def test_expired_lease_is_taken_over_and_fences_the_old_owner(
    tmp_path: Path, db_url: str, session_factory: sessionmaker[Session], tenant_id: uuid.UUID
) -> None:
    job_id = add_job(session_factory, tenant_id, "x")
    first = _runner(tmp_path, db_url, session_factory, "first")
    second = _runner(tmp_path, db_url, session_factory, "second")
    assert first.claim() is not None
    assert second.claim() is None  # leased: nothing to take
    with session_factory.begin() as s:  # the first runner went silent past its lease
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_expires_at=func.now() - timedelta(seconds=1))
        )
    taken = second.claim()
    assert taken is not None and taken.spec.id == job_id and taken.attempts == 2
    job = get_job(session_factory, job_id)
    assert job.lease_owner == "second" and job.attempts == 2

    # the old owner's heartbeat now finds it lost the lease
    stale = JobHandle(session_factory, job_id, "first", first.settings, threading.Event())
    stale.beat()
    assert stale.lost.is_set()


def test_heartbeat_renews_lease_and_sees_cancel(
    tmp_path: Path, db_url: str, session_factory: sessionmaker[Session], tenant_id: uuid.UUID
) -> None:
    job_id = add_job(session_factory, tenant_id, "x")
    runner = _runner(tmp_path, db_url, session_factory, "r")
    assert runner.claim() is not None
    before = get_job(session_factory, job_id).lease_expires_at
    handle = JobHandle(session_factory, job_id, "r", runner.settings, threading.Event())
    time.sleep(0.05)
    handle.beat()
    after = get_job(session_factory, job_id).lease_expires_at
    assert before is not None and after is not None and after > before
    assert not handle.canceled.is_set()
    with session_factory.begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    handle.beat()
    assert handle.canceled.is_set()


def test_job_past_max_attempts_fails_with_last_error(
    tmp_path: Path, db_url: str, session_factory: sessionmaker[Session], tenant_id: uuid.UUID
) -> None:
    job_id = add_job(session_factory, tenant_id, "x", max_attempts=2)
    with session_factory.begin() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                attempts=2,
                status=JobStatus.running,
                lease_owner="dead-runner",
                lease_expires_at=func.now() - timedelta(seconds=5),
                error_code="gop_failed",
                error_message="GOP 3: worker died",
            )
        )
    runner = _runner(tmp_path, db_url, session_factory, "r")
    assert runner.claim() is None
    job = get_job(session_factory, job_id)
    assert job.status == JobStatus.failed
    assert job.error_code == "gop_failed"
    assert job.error_message is not None
    assert "gave up after 2 attempts" in job.error_message
    assert "GOP 3: worker died" in job.error_message
    assert job.finished_at is not None and job.lease_owner is None


def test_crashed_runner_without_error_message_fails_clearly(
    tmp_path: Path, db_url: str, session_factory: sessionmaker[Session], tenant_id: uuid.UUID
) -> None:
    job_id = add_job(session_factory, tenant_id, "x", max_attempts=1)
    with session_factory.begin() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                attempts=1,
                status=JobStatus.running,
                lease_owner="dead",
                lease_expires_at=func.now() - timedelta(seconds=5),
            )
        )
    assert _runner(tmp_path, db_url, session_factory, "r").claim() is None
    job = get_job(session_factory, job_id)
    assert job.status == JobStatus.failed
    assert job.error_code == "too_many_attempts"
    assert "crashed or was killed" in (job.error_message or "")


def test_cancel_requested_before_claim_ends_canceled(
    tmp_path: Path, db_url: str, session_factory: sessionmaker[Session], tenant_id: uuid.UUID
) -> None:
    canceled = add_job(session_factory, tenant_id, "x", cancel_requested=True, priority=5)
    other = add_job(session_factory, tenant_id, "y")
    claimed = _runner(tmp_path, db_url, session_factory, "r").claim()
    assert claimed is not None and claimed.spec.id == other
    assert get_job(session_factory, canceled).status == JobStatus.canceled
