"""A runner process killed with SIGKILL mid-job: another runner finishes it, bit-exactly.

The doomed runner is a real ``python -m frontdoor worker`` subprocess joined to
the test session's Ray cluster. A fault marker (``workers/gops.py``) makes GOP 1
hang on its first attempt, so the kill lands while GOP 0 is done and GOP 1 is
running. The lease then expires and an in-process runner takes the job over,
re-encodes only what was missing and must produce the same ``video.gsv`` bytes
as an uninterrupted run of the same input.
"""

from __future__ import annotations

import json
import signal

import pytest
from sqlalchemy import select

from infra.models import JobGop, JobStatus
from tests.workers.helpers import (
    TINY_CODEC,
    WorkerEnv,
    assert_running,
    kill_hard,
    started_markers,
    wait_for,
    worker_process,
    write_fault,
)


@pytest.mark.slow
def test_killed_runner_job_finishes_elsewhere_with_same_bytes(
    ray_local: str, worker_env: WorkerEnv
) -> None:
    lease_s = 3.0
    survivor = worker_env.runner("survivor", lease_seconds=lease_s, gops_in_flight=2)
    settings, storage = survivor.settings, survivor.storage
    key = worker_env.upload_video(survivor, n_frames=6, name="clip.mp4")

    # reference: the same job, uninterrupted
    reference_id = worker_env.add_job(key, gop=2)
    assert survivor.run_once()
    reference = worker_env.job(reference_id)
    assert reference.status == JobStatus.succeeded, reference.error_message
    reference_bytes = storage.get_bytes(reference.outputs["video"])

    faults = worker_env.fault_dir
    for p in faults.glob("started-*"):
        p.unlink()
    write_fault(faults, 1, "sleep 300")
    job_id = worker_env.add_job(key, gop=2)

    extra_env = {
        "SPLATPACK_RAY_ADDRESS": ray_local,
        "SPLATPACK_CODEC_OVERRIDES": json.dumps(TINY_CODEC),
        "SPLATPACK_FAULT_DIR": str(faults),
        "SPLATPACK_LEASE_SECONDS": str(lease_s),
        "SPLATPACK_HEARTBEAT_SECONDS": "0.5",
        "SPLATPACK_GOPS_IN_FLIGHT": "2",
    }
    with worker_process(worker_env, settings, extra_env) as (doomed, log_path):

        def doomed_is_mid_job() -> bool:
            assert_running(doomed, log_path)
            job = worker_env.job(job_id)
            return (
                job.lease_owner == "doomed"
                and job.gops_done >= 1
                and bool(started_markers(faults, 1))
            )

        wait_for(
            doomed_is_mid_job,
            120,
            "the subprocess runner to finish GOP 0 and start GOP 1",
            interval_s=0.2,
        )
        kill_hard(doomed)
    assert doomed.returncode == -signal.SIGKILL
    killed = worker_env.job(job_id)
    assert killed.status == JobStatus.running and killed.lease_owner == "doomed"
    assert killed.attempts == 1
    with worker_env.session_factory() as s:
        rows_at_kill = {
            r.gop_index: r.payload_bytes
            for r in s.scalars(select(JobGop).where(JobGop.job_id == job_id))
        }
    assert 0 in rows_at_kill and 1 not in rows_at_kill

    # nothing to claim until the dead runner's lease runs out, then the survivor takes over
    assert survivor.claim() is None
    wait_for(survivor.run_once, lease_s + 30, "the lease to expire", interval_s=0.2)
    job = worker_env.job(job_id)
    assert job.status == JobStatus.succeeded, (job.error_code, job.error_message)
    assert job.attempts == 2 and job.gops_done == 3
    # GOP 0 was kept from the dead runner, only GOPs 1 and 2 were encoded again
    assert len(started_markers(faults, 0)) == 1
    assert len(started_markers(faults, 1)) == 2
    assert storage.get_bytes(job.outputs["video"]) == reference_bytes
