"""Helpers for worker tests: synthetic videos, tenants, jobs and tiny codec settings."""

from __future__ import annotations

import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from infra.models import Job, Tenant
from infra.settings import Settings

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
