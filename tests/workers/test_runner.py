"""The runner end to end on real components: Postgres, local storage, local Ray, PyAV video.

Injected faults use the marker files of ``workers/gops.py`` (``settings.fault_dir``).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from codec.config import CodecConfig
from codec.container import ContainerReader
from codec.gop import decode_gop
from codec.video import probe
from infra.models import JobGop, JobStatus
from tests.workers.helpers import (
    TINY_CODEC,
    WorkerEnv,
    make_video,
    started_markers,
    update_job,
    wait_for,
    wait_for_exit,
    wait_for_gop_start,
    write_fault,
)
from tests.workers.receiver import Receiver
from workers.runner import Runner


def _gop_rows(sf: sessionmaker[Session], job_id: uuid.UUID) -> list[JobGop]:
    with sf() as s:
        return list(
            s.scalars(select(JobGop).where(JobGop.job_id == job_id).order_by(JobGop.gop_index))
        )


def _start_job_with_hanging_gop(
    worker_env: WorkerEnv, loop: Callable[[Runner], object]
) -> tuple[uuid.UUID, int, threading.Thread]:
    """A 2-frame job whose GOP 0 sleeps 300 s, ``loop(runner)`` running it in a thread, and
    (once the GOP task has started) the pid of that task's process."""
    runner = worker_env.runner()
    key = worker_env.upload_video(runner, n_frames=2)
    write_fault(worker_env.fault_dir, 0, "sleep 300")
    job_id = worker_env.add_job(key, gop=2)
    thread = threading.Thread(target=loop, args=(runner,))
    thread.start()
    return job_id, wait_for_gop_start(worker_env.fault_dir, 0), thread


@pytest.mark.slow
def test_job_runs_to_success_with_outputs_and_callback(
    ray_local: str, worker_env: WorkerEnv
) -> None:
    # the receiver listens on 127.0.0.1: the SSRF guard must be told to allow it
    runner = worker_env.runner(callback_allow_private=True, callback_base_delay_s=0.05)
    assert runner.callbacks.policy.allow_private
    key = worker_env.upload_video(runner, n_frames=7)
    rx = Receiver([503, 200])  # the first try fails; the retry lands
    try:
        job_id = worker_env.add_job(key, gop=3, callback_url=rx.url)
        assert runner.run_once()
        assert rx.bodies == []  # the runner itself never calls back
        assert runner.dispatcher.run_once() == 1
        wait_for(lambda: runner.dispatcher.run_once() == 1, 5, "the callback retry to be due")
    finally:
        rx.close()
    job = worker_env.job(job_id)
    assert job.status == JobStatus.succeeded, (job.error_code, job.error_message)
    assert job.gops_total == 3 and job.gops_done == 3  # 3 + 3 + 1 frames
    assert job.frames_total == 7 and job.frames_done == 7
    assert job.attempts == 1 and job.lease_owner is None and job.finished_at is not None
    assert set(job.outputs) == {"video", "manifest", "preview", "report"}
    store = runner.storage
    for name, out_key in job.outputs.items():
        assert out_key.startswith(job.output_prefix), name
        assert store.exists(out_key), name

    gsv = worker_env.tmp_path / "out.gsv"
    store.download_file(job.outputs["video"], gsv)
    with ContainerReader(gsv) as reader:
        assert reader.n_frames == 7
        assert (reader.header.width, reader.header.height) == (48, 32)
        shapes = [decode_gop(reader.read_gop(e.index)).shape for e in reader.gops]
    assert shapes == [(3, 32, 48, 3), (3, 32, 48, 3), (1, 32, 48, 3)]

    manifest = json.loads(store.get_bytes(job.outputs["manifest"]))
    assert [g["first_frame"] for g in manifest["gops"]] == [0, 3, 6]
    assert manifest["bytes"] == gsv.stat().st_size
    data = gsv.read_bytes()
    header_sizes = set()
    with ContainerReader(gsv) as reader:
        for g in manifest["gops"]:  # byte ranges point at the GOP chunks inside the file
            off = g["chunk_offset"]
            assert data[off : off + 4] == b"GOPC"
            payload = reader.read_gop(g["index"])
            assert len(payload) == g["payload_bytes"] and g["bits"] == len(payload) * 8
            header_sizes.add(data.index(payload, off) - off)
            assert g["psnr_db"] > 10 and 0 < g["ms_ssim"] <= 1
    assert (
        len(header_sizes) == 1 and header_sizes.pop() < 64
    )  # payload right after its chunk header

    report = json.loads(store.get_bytes(job.outputs["report"]))
    assert report == job.report
    assert report["n_frames"] == 7 and report["bytes"] == gsv.stat().st_size
    assert report["bits_per_pixel"] == pytest.approx(gsv.stat().st_size * 8 / (48 * 32 * 7))
    assert report["psnr_db"] > 10 and 0 < report["ms_ssim"] <= 1
    assert report["ssim_metric"] == "SSIM"  # 48x32 frames: computed as SSIM, named so
    assert set(report["timings_s"]) >= {"probing", "encoding", "assembling", "verifying"}
    speed = report["speed"]  # 7 frames in GOPs of 3: I-frames 0, 3, 6, the rest P (or cuts)
    assert speed["frames_measured"] == 7 and speed["i_frames"] + speed["p_frames"] == 7
    assert speed["i_frames"] >= 3 and speed["i_frame_seconds_mean"] > 0
    assert speed["i_frame_iters_mean"] > 0 and speed["i_frame_iters_total"] > 0

    preview = worker_env.tmp_path / "preview.mp4"
    store.download_file(job.outputs["preview"], preview)
    info = probe(preview)
    assert (info.width, info.height) == (48, 32) and info.n_frames == 7

    rows = _gop_rows(worker_env.session_factory, job_id)
    assert [(r.gop_index, r.first_frame, r.n_frames) for r in rows] == [
        (0, 0, 3),
        (1, 3, 3),
        (2, 6, 1),
    ]
    assert store.list_keys(f"{job.output_prefix}gops/") == []  # per-GOP payloads cleaned up

    assert worker_env.job(job_id).callback_status == "delivered"
    assert len(rx.bodies) == 2
    assert rx.bodies[-1]["id"] == str(job_id) and rx.bodies[-1]["status"] == "succeeded"
    assert rx.bodies[-1]["outputs"] == job.outputs
    assert (rx.bodies[-1]["frames_done"], rx.bodies[-1]["frames_total"]) == (7, 7)


def _write_truncated_mp4(tmp_path: Path) -> Path:
    full = make_video(tmp_path / "full.mp4", n_frames=6)
    data = full.read_bytes()
    cut = tmp_path / "truncated.mp4"
    cut.write_bytes(data[: len(data) // 2])
    return cut


@pytest.mark.parametrize(
    ("case", "code", "hint"),
    [
        ("text", "input_not_video", "upload a video file"),
        ("truncated", "input_corrupt", "truncated"),
        ("empty", "input_empty", "empty"),
        ("missing", "input_not_found", "upload again"),
    ],
)
def test_bad_input_fails_with_code_and_advice(
    worker_env: WorkerEnv, case: str, code: str, hint: str
) -> None:
    runner = worker_env.runner()
    key = f"uploads/{case}/input.bin"
    if case == "text":
        runner.storage.put_bytes(key, b"Hello, this is a text file and not a video.\n" * 20)
    elif case == "truncated":
        runner.storage.put_file(key, _write_truncated_mp4(worker_env.tmp_path))
    elif case == "empty":
        runner.storage.put_bytes(key, b"")
    job_id = worker_env.add_job(key)
    assert runner.run_once()
    job = worker_env.job(job_id)
    assert job.status == JobStatus.failed
    assert job.error_code == code
    assert job.error_message and hint in job.error_message
    assert job.attempts == 1  # not retried: a new attempt cannot fix the input
    assert not runner.run_once()  # nothing re-queued


def test_input_limits(worker_env: WorkerEnv) -> None:
    runner = worker_env.runner(max_input_pixels=40 * 30)
    job_id = worker_env.add_job(worker_env.upload_video(runner))
    assert runner.run_once()
    job = worker_env.job(job_id)
    assert (job.status, job.error_code) == (JobStatus.failed, "input_too_large")
    assert "48x32" in (job.error_message or "") and "downscale" in (job.error_message or "")


@pytest.mark.parametrize("kind", ["upload", "file"])
def test_inputs_over_max_input_bytes_fail_before_download(worker_env: WorkerEnv, kind: str) -> None:
    tmp_path = worker_env.tmp_path
    runner = worker_env.runner(max_input_bytes=1000, allowed_input_roots=[tmp_path])
    video = make_video(tmp_path / "big.mp4")
    size = video.stat().st_size
    assert size > 1000
    if kind == "upload":
        job_id = worker_env.add_job(worker_env.upload_video(runner))
    else:
        job_id = worker_env.add_job(video.as_uri())
    assert runner.run_once()
    job = worker_env.job(job_id)
    assert (job.status, job.error_code, job.attempts) == (JobStatus.failed, "input_too_large", 1)
    assert "over the limit of 1000" in (job.error_message or "")


def test_file_inputs_must_be_under_allowed_roots(worker_env: WorkerEnv) -> None:
    tmp_path = worker_env.tmp_path
    runner = worker_env.runner(allowed_input_roots=[tmp_path / "allowed"])
    outside = make_video(tmp_path / "outside.mp4")
    job_id = worker_env.add_job(outside.as_uri())
    assert runner.run_once()
    job = worker_env.job(job_id)
    assert (job.status, job.error_code) == (JobStatus.failed, "input_forbidden")


@pytest.mark.slow
def test_expired_lease_requeues_and_resume_skips_finished_gops(
    ray_local: str, worker_env: WorkerEnv
) -> None:
    """A runner died after finishing GOP 0: the next one takes over and only encodes GOP 1."""
    sf = worker_env.session_factory
    runner = worker_env.runner()
    job_id = worker_env.add_job(worker_env.upload_video(runner, n_frames=4), gop=2)

    # what the dead runner left: GOP 0 in storage and in job_gops, a lease in the past
    config = CodecConfig.preset("fast", 1).with_overrides(gop=2, **TINY_CODEC).to_dict()
    done0 = worker_env.leave_gop0_of_dead_runner(runner, job_id, config)

    assert runner.run_once()
    job = worker_env.job(job_id)
    assert job.status == JobStatus.succeeded, (job.error_code, job.error_message)
    assert job.attempts == 2
    faults = worker_env.fault_dir
    assert not started_markers(faults, 0)  # GOP 0 was not encoded again
    assert len(started_markers(faults, 1)) == 1
    rows = _gop_rows(sf, job_id)
    assert [(r.gop_index, r.attempts) for r in rows] == [(0, 1), (1, 1)]
    assert rows[0].payload_bytes == done0.payload_bytes


@pytest.mark.slow
def test_gop_failure_after_ray_retries_requeues_the_job(
    ray_local: str, worker_env: WorkerEnv
) -> None:
    runner = worker_env.runner(gop_max_retries=0)
    key = worker_env.upload_video(runner, n_frames=2)
    write_fault(worker_env.fault_dir, 0, "raise")
    job_id = worker_env.add_job(key, gop=2)
    assert runner.run_once()
    job = worker_env.job(job_id)
    assert (job.status, job.attempts, job.error_code) == (JobStatus.queued, 1, "gop_failed")
    assert job.lease_owner is None
    assert runner.run_once()  # the marker was consumed: the second attempt succeeds
    job = worker_env.job(job_id)
    assert (job.status, job.attempts) == (JobStatus.succeeded, 2)
    assert job.error_code is None


@pytest.mark.slow
def test_cancel_reaches_running_ray_tasks(ray_local: str, worker_env: WorkerEnv) -> None:
    job_id, pid, thread = _start_job_with_hanging_gop(worker_env, Runner.run_once)
    update_job(worker_env.session_factory, job_id, cancel_requested=True)
    thread.join(timeout=60)
    assert not thread.is_alive()
    job = worker_env.job(job_id)
    assert job.status == JobStatus.canceled and job.finished_at is not None
    wait_for_exit(pid, "the running GOP task to end after the cancel")
    assert _gop_rows(worker_env.session_factory, job_id) == []


@pytest.mark.slow
def test_stopping_the_runner_hands_the_job_back(ray_local: str, worker_env: WorkerEnv) -> None:
    """Ctrl-C on a runner mid-job: running tasks are cancelled, the job is queued again."""
    stop = threading.Event()
    job_id, pid, thread = _start_job_with_hanging_gop(
        worker_env, lambda runner: runner.run_forever(stop)
    )
    stop.set()
    thread.join(timeout=60)
    assert not thread.is_alive()
    job = worker_env.job(job_id)
    assert job.status == JobStatus.queued and job.lease_owner is None
    assert job.attempts == 0  # an interrupted attempt is not counted against the job
    wait_for_exit(pid, "the running GOP task to end after the stop")
