"""Helpers for worker tests: synthetic videos, tenants, jobs, runners, fault markers and
tiny codec settings."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from sqlalchemy import func, update
from sqlalchemy.orm import Session, sessionmaker

from infra.jobs import callback_due_values
from infra.models import Job, JobGop, JobStatus, Tenant
from infra.settings import Settings
from infra.storage import LocalStorage
from workers.gops import EncodeGopStage, GopResult, GopSpec, gop_key
from workers.runner import Runner

# fitting iterations cut to the bone: the tests check the plumbing, not the quality
TINY_CODEC = {"fit__iframe_iters": 20, "fit__pframe_iters": 5}


def synthetic_frames(n_frames: int, width: int = 48, height: int = 32) -> np.ndarray:
    """uint8 [T, H, W, 3]: a smooth gradient with a bright square moving right."""
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((n_frames, height, width, 3), dtype=np.uint8)
    for t in range(n_frames):
        frame = np.stack(
            [
                (xx * 255 // max(width - 1, 1)),
                (yy * 255 // max(height - 1, 1)),
                np.full_like(xx, 80 + 10 * t),
            ],
            axis=-1,
        ).astype(np.uint8)
        x0 = (4 + 3 * t) % max(width - 8, 1)
        frame[8:16, x0 : x0 + 8] = (250, 240, 30)
        frames[t] = frame
    return frames


def make_video(
    path: Path, n_frames: int = 6, width: int = 48, height: int = 32, fps: int = 10
) -> Path:
    """Write a small H.264 MP4 with PyAV (near-lossless, yuv420p)."""
    frames = synthetic_frames(n_frames, width, height)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps, 1))
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10", "preset": "ultrafast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def worker_settings(tmp_path: Path, db_url: str, **overrides: Any) -> Settings:
    """Settings for an in-process runner: local storage under tmp_path, fast leases."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / "var",
        "database_url": db_url,
        "storage_backend": "local",
        "storage_root": tmp_path / "storage",
        "codec_overrides": dict(TINY_CODEC),
        "lease_seconds": 30.0,
        "heartbeat_seconds": 0.5,
        "poll_seconds": 0.2,
        "gops_in_flight": 2,
        "callback_max_tries": 3,
    }
    values.update(overrides)
    return Settings(**values)


def add_tenant(session_factory: sessionmaker[Session], name: str | None = None) -> uuid.UUID:
    with session_factory.begin() as s:
        tenant = Tenant(name=name or f"t-{uuid.uuid4().hex[:8]}")
        s.add(tenant)
        s.flush()
        return tenant.id


def add_job(
    session_factory: sessionmaker[Session], tenant_id: uuid.UUID, input_uri: str, **fields: Any
) -> uuid.UUID:
    """Insert a queued job the way the API would (fresh id, output prefix from ids)."""
    job_id = uuid.uuid4()
    values: dict[str, Any] = {
        "preset": "fast",
        "quality": 1,
        "gop": 3,
        "max_attempts": 3,
        "priority": 0,
        "user_metadata": {},
        "outputs": {},
        "report": {},
    }
    values.update(fields)
    with session_factory.begin() as s:
        s.add(
            Job(
                id=job_id,
                tenant_id=tenant_id,
                input_uri=input_uri,
                output_prefix=f"tenants/{tenant_id}/jobs/{job_id}/",
                **values,
            )
        )
    return job_id


def get_job(session_factory: sessionmaker[Session], job_id: uuid.UUID) -> Job:
    with session_factory() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def update_job(session_factory: sessionmaker[Session], job_id: uuid.UUID, **values: Any) -> None:
    """Set columns of a job's row directly (states the API cannot produce)."""
    with session_factory.begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))


def finish_job(env: WorkerEnv, job_id: uuid.UUID, status: JobStatus) -> None:
    """End a job as the runner does: the terminal status and, with a callback URL, its
    callback due now, in one transaction."""
    update_job(
        env.session_factory,
        job_id,
        status=status,
        finished_at=func.now(),
        **callback_due_values(env.job(job_id).callback_url),
    )


def expire_lease(
    session_factory: sessionmaker[Session], job_id: uuid.UUID, seconds_ago: float, **values: Any
) -> None:
    """The job's runner went silent: its lease ran out ``seconds_ago``; ``values`` set too."""
    lease_expires_at = func.now() - timedelta(seconds=seconds_ago)
    update_job(session_factory, job_id, lease_expires_at=lease_expires_at, **values)


def wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1
) -> None:
    """Poll ``predicate`` until it holds; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); look at its state
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def write_fault(fault_dir: Path, index: int, action: str) -> None:
    """Arm the fault marker of ``workers/gops.py`` for GOP ``index`` (e.g. "raise", "sleep 300")."""
    fault_dir.mkdir(parents=True, exist_ok=True)
    (fault_dir / f"gop-{index:06d}").write_text(action)


def started_markers(fault_dir: Path, index: int) -> list[Path]:
    """The ``started-<index>-<pid>-*`` markers of attempts at GOP ``index``, sorted."""
    return sorted(fault_dir.glob(f"started-{index:06d}-*"))


def marker_pid(marker: Path) -> int:
    return int(marker.name.split("-")[2])


def wait_for_gop_start(fault_dir: Path, index: int, timeout_s: float = 60) -> int:
    """Wait until an attempt at GOP ``index`` has started; the pid of its process."""
    wait_for(lambda: bool(started_markers(fault_dir, index)), timeout_s, "the GOP task to start")
    return marker_pid(started_markers(fault_dir, index)[0])


def wait_for_exit(pid: int, what: str, timeout_s: float = 30) -> None:
    """Wait until process ``pid`` is gone; AssertionError naming ``what`` if it survives."""
    wait_for(lambda: not pid_alive(pid), timeout_s, what)


@dataclass
class WorkerEnv:
    """What a runner test works with: a scratch folder, a fresh database and a tenant."""

    tmp_path: Path
    db_url: str
    session_factory: sessionmaker[Session]
    tenant_id: uuid.UUID

    @property
    def fault_dir(self) -> Path:
        return self.tmp_path / "faults"

    def runner(
        self,
        worker_id: str = "r1",
        session_factory: sessionmaker[Session] | None = None,
        **overrides: Any,
    ) -> Runner:
        """An in-process runner on local storage under tmp_path, with fault markers on."""
        settings = worker_settings(
            self.tmp_path, self.db_url, fault_dir=self.fault_dir, **overrides
        )
        return Runner(
            settings,
            session_factory or self.session_factory,
            LocalStorage(settings.resolved_storage_root),
            worker_id=worker_id,
        )

    def upload_video(self, runner: Runner, n_frames: int = 6, name: str = "in.mp4") -> str:
        """Write a synthetic clip and put it into the runner's storage; its key."""
        src = make_video(self.tmp_path / name, n_frames=n_frames)
        key = f"uploads/{uuid.uuid4().hex}/{name}"
        runner.storage.put_file(key, src)
        return key

    def add_job(self, input_uri: str, **fields: Any) -> uuid.UUID:
        return add_job(self.session_factory, self.tenant_id, input_uri, **fields)

    def job(self, job_id: uuid.UUID) -> Job:
        return get_job(self.session_factory, job_id)

    def leave_gop0_of_dead_runner(
        self, runner: Runner, job_id: uuid.UUID, config: dict[str, Any]
    ) -> GopResult:
        """What a runner that died after GOP 0 (2 frames of ``in.mp4``) leaves: the payload in
        storage, its ``job_gops`` row, the job running under an expired lease."""
        from codec.video import read_frames

        spec0 = GopSpec(0, 0, 2, gop_key(self.job(job_id).output_prefix, 0))
        frames = read_frames(self.tmp_path / "in.mp4", 0, 2)
        done0 = EncodeGopStage(config=config).process(spec0, frames, runner.storage)
        with self.session_factory.begin() as s:
            s.add(
                JobGop(
                    job_id=job_id,
                    gop_index=0,
                    first_frame=0,
                    n_frames=2,
                    payload_key=spec0.key,
                    payload_bytes=done0.payload_bytes,
                    psnr_db=done0.psnr_db,
                    encode_seconds=done0.encode_seconds,
                    target=done0.target,
                )
            )
        expire_lease(
            self.session_factory, job_id, 1, status=JobStatus.running, attempts=1, gops_done=1,
            lease_owner="dead-runner",
        )  # fmt: skip
        return done0


REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def worker_process(
    env: WorkerEnv, settings: Settings, extra_env: dict[str, str], worker_id: str = "doomed"
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A real ``python -m frontdoor worker`` process on ``env``'s database and ``settings``' local
    storage (plus ``extra_env``), logging to a file; yields (process, log path) and kills it
    on the way out if it still runs."""
    proc_env = dict(os.environ)
    proc_env.update(
        {
            "SPLATPACK_DATABASE_URL": env.db_url,
            "SPLATPACK_DATA_DIR": str(settings.data_dir),
            "SPLATPACK_STORAGE_BACKEND": "local",
            "SPLATPACK_STORAGE_ROOT": str(settings.resolved_storage_root),
            "SPLATPACK_POLL_SECONDS": "0.2",
            **extra_env,
        }
    )
    log_path = env.tmp_path / f"{worker_id}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "frontdoor", "worker", "--worker-id", worker_id],
            cwd=REPO,
            env=proc_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc, log_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def assert_running(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    """Fail with the process's log tail if it has exited."""
    if proc.poll() is not None:
        raise AssertionError(f"runner exited early:\n{log_path.read_text()[-3000:]}")


def kill_hard(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL, as a crash would, and reap it."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
