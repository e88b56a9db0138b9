"""The durable callback queue on real components: Postgres, real HTTP receivers on 127.0.0.1,
real runner processes.

Jobs here end without Ray: an input that is not in storage fails at once
(``input_not_found``), and a cancel request ends a job at claim time. Time-dependent
steps (backoff, claim leases) run on an injected clock, so nothing sleeps.
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from infra.callback_urls import CallbackUrlPolicy
from infra.db import make_engine, make_session_factory
from infra.models import JobStatus
from tests.workers.helpers import (
    WorkerEnv,
    assert_running,
    finish_job,
    kill_hard,
    wait_for,
    worker_process,
)
from workers.callback_dispatch import CallbackDispatcher
from workers.callbacks import DELIVERED, FAILED, PENDING, CallbackDelivery

LOCAL_OK = CallbackUrlPolicy(allow_private=True)


class StepClock:
    """A timezone-aware clock tests move by hand (starts a little after the real now, so
    callbacks the database made due with ``now()`` are due on it)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC) + timedelta(seconds=1)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _dispatcher(
    worker_env: WorkerEnv, clock: StepClock | None = None, **delivery: Any
) -> CallbackDispatcher:
    options: dict[str, Any] = {"max_tries": 3, "base_delay_s": 10.0, "timeout_s": 5.0}
    options.update(delivery)
    return CallbackDispatcher(
        worker_env.session_factory,
        CallbackDelivery(policy=LOCAL_OK, **options),
        lease_s=60.0,
        clock=clock,
    )


def test_a_hanging_receiver_does_not_hold_up_the_next_job(
    worker_env: WorkerEnv, receiver_factory: Any
) -> None:
    """The runner ends job 1, whose receiver hangs on the callback, and claims and ends
    job 2 (submitted meanwhile) while that request is still open."""
    rx = receiver_factory([200, 200], hold_first=1)
    runner = worker_env.runner(
        callback_allow_private=True, callback_timeout_s=30.0, poll_seconds=0.05
    )
    first = worker_env.add_job("uploads/gone/a.mp4", callback_url=rx.url)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run_forever, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: len(rx.bodies) >= 1, 15, "job 1's callback to reach the receiver")
        assert rx.bodies[0]["id"] == str(first) and rx.answered == 0
        second = worker_env.add_job("uploads/gone/b.mp4", callback_url=rx.url)
        wait_for(lambda: worker_env.job(second).status == JobStatus.failed, 5, "job 2 to end")
        job = worker_env.job(first)  # its one try is still hanging at the receiver
        assert job.status == JobStatus.failed and not rx.release.is_set()
        assert (job.callback_status, job.callback_attempts) == (PENDING, 1)
    finally:
        rx.release.set()
        try:
            wait_for(
                lambda: all(
                    worker_env.job(j).callback_status == DELIVERED for j in (first, second)
                ),
                15,
                "both callbacks to be delivered",
            )
        finally:
            stop.set()
            thread.join(timeout=30)
    assert not thread.is_alive()
    assert sorted(b["id"] for b in rx.bodies) == sorted([str(first), str(second)])
    for job_id in (first, second):
        job = worker_env.job(job_id)
        assert job.status == JobStatus.failed and job.error_code == "input_not_found"
        assert job.callback_attempts == 1 and job.callback_error is None


def test_a_hanging_receiver_holds_one_slot_not_the_other_callbacks(
    worker_env: WorkerEnv, receiver_factory: Any
) -> None:
    stuck = receiver_factory([200], hold_first=1)
    healthy = receiver_factory([])
    slow_job = worker_env.add_job("uploads/x.mp4", callback_url=stuck.url)
    finish_job(worker_env, slow_job, JobStatus.failed)
    others = [worker_env.add_job(f"uploads/{i}.mp4", callback_url=healthy.url) for i in range(5)]
    dispatcher = CallbackDispatcher(
        worker_env.session_factory,
        CallbackDelivery(policy=LOCAL_OK, timeout_s=30.0),
        batch_size=2,
        poll_s=0.05,
    )
    dispatcher.start()
    try:
        wait_for(lambda: len(stuck.bodies) == 1, 10, "the hanging try to start")
        for job_id in others:  # ended while the hanging try holds a slot
            finish_job(worker_env, job_id, JobStatus.succeeded)
        dispatcher.wake()
        wait_for(lambda: healthy.answered == 5, 10, "the other callbacks")
        assert stuck.answered == 0
        assert worker_env.job(slow_job).callback_status == PENDING
    finally:
        stuck.release.set()
        dispatcher.stop(timeout_s=10)
    assert worker_env.job(slow_job).callback_status == DELIVERED
    assert all(worker_env.job(j).callback_status == DELIVERED for j in others)


def test_transient_failures_back_off_exponentially_then_fail(
    worker_env: WorkerEnv, receiver_factory: Any
) -> None:
    rx = receiver_factory([503] * 10)
    job_id = worker_env.add_job("uploads/x.mp4", callback_url=rx.url, cancel_requested=True)
    assert worker_env.runner().claim() is None  # ends it canceled, its callback due
    assert worker_env.job(job_id).callback_status == PENDING
    clock = StepClock()
    dispatcher = _dispatcher(worker_env, clock, max_tries=4, base_delay_s=10.0, max_delay_s=25.0)

    waits = []
    for attempt in range(1, 5):
        assert dispatcher.run_once() == 1, attempt
        job = worker_env.job(job_id)
        assert job.callback_attempts == attempt and job.callback_error == "answered 503"
        if attempt == 4:
            break
        assert job.callback_status == PENDING and job.callback_next_at is not None
        wait_s = (job.callback_next_at - clock.now).total_seconds()
        waits.append(wait_s)
        clock.advance(wait_s - 0.5)
        assert dispatcher.run_once() == 0  # not due yet
        clock.advance(0.5)
    assert waits == [10.0, 20.0, 25.0]  # doubling, capped at max_delay_s
    job = worker_env.job(job_id)
    assert job.callback_status == FAILED and job.callback_next_at is None
    assert job.status == JobStatus.canceled  # a failing callback never touches the job
    assert len(rx.bodies) == 4 and {b["status"] for b in rx.bodies} == {"canceled"}
    clock.advance(3600)
    assert dispatcher.run_once() == 0 and len(rx.bodies) == 4


def test_a_rejected_callback_fails_at_once(worker_env: WorkerEnv, receiver_factory: Any) -> None:
    rx = receiver_factory([410])
    job_id = worker_env.add_job("uploads/x.mp4", callback_url=rx.url)
    finish_job(worker_env, job_id, JobStatus.succeeded)
    assert _dispatcher(worker_env).run_once() == 1
    job = worker_env.job(job_id)
    assert (job.callback_status, job.callback_attempts) == (FAILED, 1)
    assert job.callback_error == "answered 410" and job.status == JobStatus.succeeded


def test_racing_dispatchers_deliver_each_callback_once(
    worker_env: WorkerEnv, receiver_factory: Any
) -> None:
    rx = receiver_factory([])
    job_ids = [worker_env.add_job(f"uploads/{i}.mp4", callback_url=rx.url) for i in range(12)]
    for job_id in job_ids:
        finish_job(worker_env, job_id, JobStatus.succeeded)
    engines = [make_engine(worker_env.db_url) for _ in range(3)]
    barrier = threading.Barrier(len(engines))

    def work(engine: Any) -> None:
        dispatcher = CallbackDispatcher(
            make_session_factory(engine), CallbackDelivery(policy=LOCAL_OK), batch_size=2
        )
        barrier.wait()
        while dispatcher.run_once():
            pass

    threads = [threading.Thread(target=work, args=(e,)) for e in engines]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for engine in engines:
            engine.dispose()
    assert sorted(b["id"] for b in rx.bodies) == sorted(str(j) for j in job_ids)
    assert all(worker_env.job(j).callback_status == DELIVERED for j in job_ids)


def test_a_claim_whose_dispatcher_vanished_is_retried_after_its_lease(
    worker_env: WorkerEnv, receiver_factory: Any
) -> None:
    """A dispatcher claims and never reports (it died): after the lease another delivers,
    and the first one's late report is fenced off."""
    rx = receiver_factory([200])
    job_id = worker_env.add_job("uploads/x.mp4", callback_url=rx.url)
    finish_job(worker_env, job_id, JobStatus.failed)
    clock = StepClock()
    lost = _dispatcher(worker_env, clock)
    (claimed,) = lost.claim()
    survivor = _dispatcher(worker_env, clock)
    assert survivor.run_once() == 0  # leased to the lost one
    clock.advance(60)
    assert survivor.run_once() == 1
    job = worker_env.job(job_id)
    assert (job.callback_status, job.callback_attempts) == (DELIVERED, 2)
    assert lost.deliver(claimed) == PENDING  # its result is no longer its to write
    assert worker_env.job(job_id).callback_status == DELIVERED


def test_a_callback_due_when_its_runner_is_killed_is_delivered_by_another(
    worker_env: WorkerEnv, receiver_factory: Any
) -> None:
    """A real runner process ends a job and is SIGKILLed while its callback hangs at the
    receiver; once the claim's lease has run out another runner's dispatcher delivers it."""
    rx = receiver_factory([200, 200], hold_first=1)
    job_id = worker_env.add_job("uploads/gone/in.mp4", callback_url=rx.url)
    survivor = worker_env.runner("survivor", callback_allow_private=True)
    settings = survivor.settings
    extra_env = {
        "SPLATPACK_CALLBACK_ALLOW_PRIVATE": "true",
        "SPLATPACK_CALLBACK_TIMEOUT_S": "60",
        "SPLATPACK_CALLBACK_LEASE_SECONDS": "120",
    }
    with worker_process(worker_env, settings, extra_env) as (doomed, log_path):

        def callback_in_flight() -> bool:
            assert_running(doomed, log_path)
            return len(rx.bodies) >= 1

        wait_for(callback_in_flight, 60, "the runner to end the job and call back")
        kill_hard(doomed)
    assert doomed.returncode == -signal.SIGKILL and rx.answered == 0
    job = worker_env.job(job_id)
    assert job.status == JobStatus.failed and job.error_code == "input_not_found"
    assert (job.callback_status, job.callback_attempts) == (PENDING, 1)
    assert job.callback_next_at is not None

    assert survivor.dispatcher.run_once() == 0  # the dead runner's claim has not run out
    clock = StepClock()
    clock.now = job.callback_next_at + timedelta(seconds=1)
    survivor.dispatcher.clock = clock
    assert survivor.dispatcher.run_once() == 1
    job = worker_env.job(job_id)
    assert (job.callback_status, job.callback_attempts) == (DELIVERED, 2)
    assert [b["id"] for b in rx.bodies] == [str(job_id), str(job_id)]
    assert rx.answered == 1


def test_stopping_a_runner_leaves_undelivered_callbacks_due(
    worker_env: WorkerEnv, receiver_factory: Any
) -> None:
    """Callbacks made due while no dispatcher runs wait in the table for the next one."""
    rx = receiver_factory([])
    job_ids = [worker_env.add_job(f"uploads/gone/{i}.mp4", callback_url=rx.url) for i in range(2)]
    runner = worker_env.runner(callback_allow_private=True)
    assert runner.run_once() and runner.run_once()  # no dispatcher: nothing sent
    assert rx.bodies == []
    assert all(worker_env.job(j).callback_status == PENDING for j in job_ids)
    started = time.monotonic()
    assert worker_env.runner("other", callback_allow_private=True).dispatcher.run_once() == 2
    assert time.monotonic() - started < 5
    assert all(worker_env.job(j).callback_status == DELIVERED for j in job_ids)
