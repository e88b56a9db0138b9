"""Progress within a GOP, through the real service: ``splatpack serve`` (API process and
runner) on the suite's Postgres, S3 on a moto server over HTTP on 127.0.0.1, and the
suite's local Ray cluster.

A one-GOP job's task is held after 3 of its 6 frames (fault marker ``hold 3``,
``workers/gops.py``) until the test releases it, so the test sees the job part way
through its only GOP without racing the encoder: the API shows frames done and a
progress strictly between the start of encoding and its end, the same numbers are in
the job's row in Postgres, and once released the job succeeds at 100 with every frame
counted. Before, a one-GOP job sat at the start of encoding until it was done.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from frontdoor.client import SplatpackClient
from infra.models import Job, JobPhase
from infra.storage import S3Storage
from service.schemas import PHASE_START
from tests.fixtures.s3 import free_port
from tests.fixtures.serve import ServeProcess, serve_env
from tests.workers.helpers import make_video, wait_for


@pytest.mark.slow
def test_a_one_gop_job_moves_while_its_gop_encodes(
    ray_local: str,
    db_url: str,
    session_factory: sessionmaker[Session],
    s3_endpoint: str,
    s3_bucket: str,
    serve_data_dir: Path,
    tmp_path: Path,
) -> None:
    S3Storage(s3_bucket, endpoint_url=s3_endpoint, create_bucket=True)
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "gop-000000").write_text("hold 3")
    port = free_port()
    env = serve_env(
        serve_data_dir,
        port,
        ray_local,
        database_url=db_url,
        storage_backend="s3",
        s3_bucket=s3_bucket,
        s3_endpoint_url=s3_endpoint,
        fault_dir=str(faults),
        progress_write_seconds="0.2",
    )
    serve = ServeProcess(env)
    try:
        key = serve.wait_for_key()
        with SplatpackClient(f"http://127.0.0.1:{port}", key) as client:
            upload = client.upload(make_video(tmp_path / "clip.mp4", n_frames=6))
            job_id = str(client.create_job(upload["key"], gop=6, quality=1)["id"])
            history: list[dict[str, Any]] = []

            def half_way() -> bool:
                job: dict[str, Any] = client.get_job(job_id)
                history.append(job)
                assert job["status"] in ("queued", "running"), job
                return job["frames_done"] == 3

            wait_for(half_way, 180, "the held GOP's 3 frames to show in the API")
            held = history[-1]
            assert held["status"] == "running" and held["phase"] == "encoding", held
            assert held["gops_done"] == 0 and held["gops_total"] == 1  # the only GOP runs
            assert held["frames_total"] == 6
            start, end = PHASE_START[JobPhase.encoding], PHASE_START[JobPhase.assembling]
            assert start < held["progress_percent"] < end, held
            assert held["progress_percent"] == round(start + (end - start) * 3 / 6, 1)
            with session_factory() as s:  # persisted in Postgres, not held in the API
                row = s.get(Job, uuid.UUID(job_id))
                assert row is not None and (row.frames_done, row.frames_total) == (3, 6)

            (faults / "release-000000").touch()
            final = client.wait(job_id, poll_s=0.3, timeout_s=180)
            history.append(final)
        assert final["status"] == "succeeded", final
        assert final["progress_percent"] == 100.0
        assert (final["frames_done"], final["frames_total"], final["gops_done"]) == (6, 6, 1)
        progress = [j["progress_percent"] for j in history]
        assert progress == sorted(progress), progress  # never backwards
        serve.proc.send_signal(signal.SIGINT)
        assert serve.proc.wait(timeout=60) == 0, serve.output()[-3000:]
    finally:
        serve.stop()
