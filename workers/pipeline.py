"""One job, phase by phase: probing -> encoding -> assembling -> verifying -> uploading.

The pipeline talks to the database only through :class:`JobControl` (the
runner's fenced job handle) and to Ray only through
:class:`workers.tasks.GopExecutor`, so each phase's logic stays plain Python.

Encoding streams: the source is cut GOP by GOP with ``codec.video.iter_gops``
and each GOP's frames go to Ray as they are cut, with a bounded number of
GOPs in flight, so memory stays flat however long the video is. GOPs a
previous attempt finished (row in ``job_gops`` and payload in storage with the
recorded size) are skipped.

Progress: besides GOPs done, the encode phase reports frames done, counting the
frames GOP tasks still in flight have encoded (``GopExecutor.frames_in_flight``, see
``workers/tasks.py`` for how they get from the Ray workers to the runner), so a job of
one long GOP moves too.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from infra.models import Job, JobPhase
from workers.assemble import (
    AssembleStage,
    GopRecord,
    VerifyStage,
    build_manifest,
    build_report,
)
from workers.gops import GopResult, GopSpec, plan_gops
from workers.inputs import JobError, check_input, fetch_input

if TYPE_CHECKING:
    from infra.settings import Settings
    from infra.storage import Storage

log = logging.getLogger("splatpack.pipeline")

OUTPUT_FILES = {
    "video": "video.gsv",
    "manifest": "manifest.json",
    "preview": "preview.mp4",
    "report": "report.json",
}


class JobCanceled(Exception):
    """The user asked to cancel the job."""


class LeaseLost(Exception):
    """Another runner owns the job now (our lease expired); stop without writing."""


class JobInterrupted(Exception):
    """This runner is shutting down; the job goes back to the queue."""


class JobControl(Protocol):
    """What the pipeline may do to its job row (every write is fenced by the lease)."""

    def check(self) -> None:
        """Raise :class:`JobCanceled`, :class:`LeaseLost` or :class:`JobInterrupted` if due."""

    def set_phase(self, phase: JobPhase) -> None: ...

    def set_gops_total(self, total: int) -> None: ...

    def report_frames(self, done: int, total: int, *, force: bool = False) -> None:
        """Frames encoded so far of ``total``; may be throttled unless ``force``."""
        ...

    def done_gops(self) -> list[GopRecord]: ...

    def record_gop(self, result: GopResult) -> int:
        """Insert the GOP's row, bump ``gops_done``; returns the new ``gops_done``."""
        ...


@dataclass(frozen=True)
class JobSpec:
    """The parts of a job row the pipeline reads (a snapshot taken at claim time)."""

    id: uuid.UUID
    input_uri: str
    preset: str
    quality: int
    gop: int
    max_frames: int | None
    output_prefix: str
    enhance: bool = False
    target_psnr: float | None = None  # quality target (codec/target.py), at most one
    target_msssim: float | None = None

    @staticmethod
    def from_row(job: Job) -> JobSpec:
        return JobSpec(
            id=job.id,
            input_uri=job.input_uri,
            preset=job.preset,
            quality=job.quality,
            gop=job.gop,
            max_frames=job.max_frames,
            output_prefix=job.output_prefix,
            enhance=job.enhance,
            target_psnr=job.target_psnr,
            target_msssim=job.target_msssim,
        )


@dataclass
class PipelineOutcome:
    outputs: dict[str, str]  # name -> storage key
    report: dict[str, Any]
    gop_keys: list[str] = field(default_factory=list)  # per-GOP payloads, now redundant


def codec_config_dict(job: JobSpec, settings: Settings) -> dict[str, Any]:
    """The job's codec config (preset, quality, gop, then ``settings.codec_overrides``), in the
    compact form (preset, quality, overrides) that the stream header and report carry."""
    from codec.config import CodecConfig
    from codec.errors import CodecConfigError

    try:
        # "enhance": true runs the enhancer that pays: the per-GOP filter ("filter", GOP format 7;
        # the network's modes never beat plain decoding, codec/enhance/README.md)
        enhance = {"enhance": "filter"} if job.enhance else {}
        # a quality target: each GOP searches the ladder from `quality` (codec/target.py)
        target = {"target_psnr": job.target_psnr, "target_msssim": job.target_msssim}
        cfg = CodecConfig.preset(job.preset, job.quality).with_overrides(  # type: ignore[arg-type]
            gop=job.gop, **{**enhance, **target, **settings.codec_overrides}
        )
    except CodecConfigError as exc:
        raise JobError("invalid_config", f"{exc}; fix the job's preset/quality/gop/target") from exc
    return cfg.to_compact()


def _stream_gops(path: Path, gop: int, n_frames: int) -> Iterator[tuple[int, np.ndarray]]:
    """``iter_gops`` with decode errors turned into ``input_corrupt``."""
    from codec.errors import VideoInputError
    from codec.video import iter_gops

    it = iter_gops(path, gop, max_frames=n_frames)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except VideoInputError as exc:
            raise JobError(
                "input_corrupt",
                f"the video stops decoding part way ({exc}); it may be truncated: re-export it",
            ) from exc
        yield item


def encode_phase(
    job: JobSpec,
    control: JobControl,
    settings: Settings,
    storage: Storage,
    source: Path,
    n_frames: int,
    config: dict[str, Any],
    poll_s: float = 0.2,
) -> tuple[list[GopRecord], int]:
    """Fan the GOPs out to Ray; returns every finished GOP and the frames actually decoded."""
    from workers.tasks import GopExecutor

    plan = plan_gops(n_frames, job.gop, job.output_prefix)
    control.set_gops_total(len(plan))
    done: dict[int, GopRecord] = {}
    for g in control.done_gops():
        if storage.exists(g.key) and storage.size(g.key) == g.payload_bytes:
            done[g.index] = g
    if done:
        log.info("job %s: resuming, %d of %d GOPs already done", job.id, len(done), len(plan))
    control.report_frames(sum(g.n_frames for g in done.values()), plan.n_frames, force=True)
    finished: dict[int, GopRecord] = {}

    def collect(results: list[GopResult]) -> None:
        for r in results:
            finished[r.index] = GopRecord(
                r.index,
                r.first_frame,
                r.n_frames,
                r.key,
                r.payload_bytes,
                r.psnr_db,
                r.encode_seconds,
                tuple(r.frames),
                r.target,
            )
            control.record_gop(r)

    def collect_and_report(results: list[GopResult]) -> None:
        collect(results)
        frames_done = sum(g.n_frames for g in finished.values()) + executor.frames_in_flight()
        control.report_frames(frames_done, plan.n_frames, force=bool(results))

    executor = GopExecutor(settings, config)
    frames_seen = 0
    try:
        for first, frames in _stream_gops(source, job.gop, n_frames):
            if first != frames_seen:
                raise JobError(
                    "input_corrupt",
                    f"the video's frames are not contiguous (GOP starts at {first}, expected "
                    f"{frames_seen}); re-export it",
                )
            spec = GopSpec(
                index=first // job.gop,
                first_frame=first,
                n_frames=int(frames.shape[0]),
                key=plan.gops[first // job.gop].key,
            )
            frames_seen += spec.n_frames
            prior = done.get(spec.index)
            if prior is not None and prior.first_frame == first and prior.n_frames == spec.n_frames:
                finished[spec.index] = prior
                continue
            while executor.full:
                control.check()
                collect_and_report(executor.wait(poll_s))
            control.check()
            executor.submit(spec, frames)
            del frames
        while executor.in_flight:
            control.check()
            collect_and_report(executor.wait(poll_s))
    except BaseException:
        executor.cancel_all()
        raise
    finally:
        executor.close()
    if frames_seen == 0:
        raise JobError("input_empty", "the video has no decodable frames; check the file plays")
    if frames_seen != n_frames:  # the container over-reported its length: trust the stream
        log.warning("job %s: probe said %d frames, decoded %d", job.id, n_frames, frames_seen)
        control.set_gops_total(len(plan_gops(frames_seen, job.gop, job.output_prefix)))
    control.report_frames(frames_seen, frames_seen, force=True)
    return [finished[i] for i in sorted(finished)], frames_seen


def run_pipeline(
    job: JobSpec, control: JobControl, settings: Settings, storage: Storage, scratch: Path
) -> PipelineOutcome:
    """Run every phase of ``job`` with local files under ``scratch``; returns outputs and report."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    control.set_phase(JobPhase.probing)
    config = codec_config_dict(job, settings)
    source = fetch_input(job.input_uri, storage, settings, scratch)
    checked = check_input(source, settings, job.max_frames)
    info = checked.info
    timings["probing"] = time.perf_counter() - t0
    control.check()

    t = time.perf_counter()
    control.set_phase(JobPhase.encoding)
    gops, n_frames = encode_phase(job, control, settings, storage, source, checked.n_frames, config)
    timings["encoding"] = time.perf_counter() - t
    control.check()

    t = time.perf_counter()
    control.set_phase(JobPhase.assembling)
    gsv_path = scratch / OUTPUT_FILES["video"]
    assemble = AssembleStage(
        width=info.width, height=info.height, fps=checked.fps, gop=job.gop, codec_params=config
    )
    gsv_bytes = assemble.process(gops, n_frames, storage, gsv_path)
    timings["assembling"] = time.perf_counter() - t
    control.check()

    t = time.perf_counter()
    control.set_phase(JobPhase.verifying)
    preview_path = scratch / OUTPUT_FILES["preview"]
    verify = VerifyStage(expected_frames=n_frames, gop=job.gop).process(
        gsv_path, source, preview_path
    )
    timings["verifying"] = time.perf_counter() - t
    control.check()

    t = time.perf_counter()
    control.set_phase(JobPhase.uploading)
    keys = {name: f"{job.output_prefix}{fname}" for name, fname in OUTPUT_FILES.items()}
    manifest = build_manifest(
        gsv_path, gops, job_id=str(job.id), video_key=keys["video"], verify=verify
    )
    storage.put_file(keys["video"], gsv_path)
    storage.put_file(keys["preview"], preview_path)
    storage.put_bytes(keys["manifest"], json.dumps(manifest, indent=2).encode())
    timings["uploading"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    report = build_report(
        job_id=str(job.id),
        gsv_bytes=gsv_bytes,
        width=info.width,
        height=info.height,
        n_frames=n_frames,
        gops=gops,
        verify=verify,
        timings_s=timings,
        config=config,
        preset=job.preset,
        quality=job.quality,
    )
    storage.put_bytes(keys["report"], json.dumps(report, indent=2).encode())
    return PipelineOutcome(outputs=keys, report=report, gop_keys=[g.key for g in gops])
