"""Claiming jobs on a real Postgres: SKIP LOCKED, priority, leases, attempts, cancel."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from infra.db import make_engine, make_session_factory
from infra.models import JobStatus
from tests.workers.helpers import WorkerEnv, expire_lease, update_job
from workers.runner import JobHandle


def _runner_died(
    sf: sessionmaker[Session], job_id: uuid.UUID, attempts: int, owner: str, **values: Any
) -> None:
    """The job's runner died in attempt ``attempts``: still running, its lease 5 s past."""
    expire_lease(
        sf, job_id, 5, status=JobStatus.running, attempts=attempts, lease_owner=owner, **values
    )


def test_racing_runners_never_claim_the_same_job(worker_env: WorkerEnv) -> None:
    job_ids = {worker_env.add_job(f"uploads/{i}.mp4") for i in range(24)}
    n_threads = 4
    barrier = threading.Barrier(n_threads)
    claims: list[tuple[str, uuid.UUID]] = []
    lock = threading.Lock()
    engines = []

    def work(i: int) -> None:
        engine = make_engine(worker_env.db_url)  # its own pool: truly concurrent transactions
        engines.append(engine)
        runner = worker_env.runner(f"runner-{i}", session_factory=make_session_factory(engine))
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
        job = worker_env.job(job_id)
        assert job.status == JobStatus.running
        assert job.lease_owner == worker
        assert job.attempts == 1
        assert job.lease_expires_at is not None


def test_claim_order_is_priority_then_age(worker_env: WorkerEnv) -> None:
    old_low = worker_env.add_job("a", priority=0)
    time.sleep(0.01)
    high = worker_env.add_job("b", priority=10)
    time.sleep(0.01)
    new_low = worker_env.add_job("c", priority=0)
    runner = worker_env.runner("r")
    order = []
    while (claimed := runner.claim()) is not None:
        order.append(claimed.spec.id)
    assert order == [high, old_low, new_low]


def test_expired_lease_is_taken_over_and_fences_the_old_owner(worker_env: WorkerEnv) -> None:
    sf = worker_env.session_factory
    job_id = worker_env.add_job("x")
    first = worker_env.runner("first")
    second = worker_env.runner("second")
    assert first.claim() is not None
    assert second.claim() is None  # leased: nothing to take
    expire_lease(sf, job_id, 1)  # the first runner went silent past its lease
    taken = second.claim()
    assert taken is not None and taken.spec.id == job_id and taken.attempts == 2
    job = worker_env.job(job_id)
    assert job.lease_owner == "second" and job.attempts == 2

    # the old owner's heartbeat now finds it lost the lease
    stale = JobHandle(sf, job_id, "first", first.settings, threading.Event())
    stale.beat()
    assert stale.lost.is_set()


def test_heartbeat_renews_lease_and_sees_cancel(worker_env: WorkerEnv) -> None:
    sf = worker_env.session_factory
    job_id = worker_env.add_job("x")
    runner = worker_env.runner("r")
    assert runner.claim() is not None
    before = worker_env.job(job_id).lease_expires_at
    handle = JobHandle(sf, job_id, "r", runner.settings, threading.Event())
    time.sleep(0.05)
    handle.beat()
    after = worker_env.job(job_id).lease_expires_at
    assert before is not None and after is not None and after > before
    assert not handle.canceled.is_set()
    update_job(sf, job_id, cancel_requested=True)
    handle.beat()
    assert handle.canceled.is_set()


def test_job_past_max_attempts_fails_with_last_error(worker_env: WorkerEnv) -> None:
    job_id = worker_env.add_job("x", max_attempts=2)
    error = {"error_code": "gop_failed", "error_message": "GOP 3: worker died"}
    _runner_died(worker_env.session_factory, job_id, 2, "dead-runner", **error)
    runner = worker_env.runner("r")
    assert runner.claim() is None
    job = worker_env.job(job_id)
    assert job.status == JobStatus.failed
    assert job.error_code == "gop_failed"
    assert job.error_message is not None
    assert "gave up after 2 attempts" in job.error_message
    assert "GOP 3: worker died" in job.error_message
    assert job.finished_at is not None and job.lease_owner is None


def test_crashed_runner_without_error_message_fails_clearly(worker_env: WorkerEnv) -> None:
    job_id = worker_env.add_job("x", max_attempts=1)
    _runner_died(worker_env.session_factory, job_id, 1, "dead")
    assert worker_env.runner("r").claim() is None
    job = worker_env.job(job_id)
    assert job.status == JobStatus.failed
    assert job.error_code == "too_many_attempts"
    assert "crashed or was killed" in (job.error_message or "")


def test_cancel_requested_before_claim_ends_canceled(worker_env: WorkerEnv) -> None:
    canceled = worker_env.add_job("x", cancel_requested=True, priority=5)
    other = worker_env.add_job("y")
    claimed = worker_env.runner("r").claim()
    assert claimed is not None and claimed.spec.id == other
    assert worker_env.job(canceled).status == JobStatus.canceled
