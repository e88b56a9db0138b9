"""Assemble GOP payloads into one ``.gsv``, verify it by decoding, and build the job's outputs.

Stages (plain dataclasses, no Ray, no database):

- :class:`AssembleStage`: GOP payloads from storage -> ``.gsv`` file (any order in).
- :class:`VerifyStage`: decode every GOP of the ``.gsv``, check frame count and
  size, measure PSNR / MS-SSIM against the source frames, and write the
  preview video from the same decoded frames (one decode pass).
- :func:`build_manifest` / :func:`build_report`: the JSON documents uploaded
  next to the bitstream.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from codec.metrics import ssim_label
from workers.inputs import JobError

if TYPE_CHECKING:
    from infra.storage import Storage

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class GopRecord:
    """A finished GOP: what the database row (or the task) says about it."""

    index: int
    first_frame: int
    n_frames: int
    key: str
    payload_bytes: int
    psnr_db: float | None = None
    encode_seconds: float | None = None
    # per-frame codec stats (codec.gop.FrameStats as dicts) when the GOP was encoded in this run;
    # GOPs resumed from the database have none
    frames: tuple[dict[str, Any], ...] = ()
    # target-quality mode: the GOP's search (codec.target.GopTargetReport.to_dict()); kept in
    # the database (job_gops.target), so a resumed job reports it too
    target: dict[str, Any] | None = None


def check_coverage(gops: Sequence[GopRecord], n_frames: int) -> list[GopRecord]:
    """``gops`` sorted by index, checked to cover frames ``0..n_frames-1`` exactly once."""
    ordered = sorted(gops, key=lambda g: g.index)
    expected_first = 0
    for i, g in enumerate(ordered):
        if g.index != i or g.first_frame != expected_first or g.n_frames < 1:
            raise JobError(
                "gop_missing",
                f"GOP list has a gap or overlap at GOP {i} (got index {g.index}, first frame "
                f"{g.first_frame}, expected first frame {expected_first}); the job will retry",
                retryable=True,
            )
        expected_first += g.n_frames
    if expected_first != n_frames:
        raise JobError(
            "gop_missing",
            f"GOPs cover {expected_first} frames but the job has {n_frames}; the job will retry",
            retryable=True,
        )
    return ordered


@dataclass(frozen=True)
class AssembleStage:
    """Write the ``.gsv`` from GOP payloads in storage (one payload in memory at a time)."""

    width: int
    height: int
    fps: Fraction
    gop: int
    codec_params: dict[str, Any]

    def process(
        self, gops: Sequence[GopRecord], n_frames: int, storage: Storage, out_path: Path
    ) -> int:
        """Assemble and return the file size in bytes."""
        from codec.container import ContainerWriter, StreamHeader

        ordered = check_coverage(gops, n_frames)
        header = StreamHeader(
            width=self.width,
            height=self.height,
            fps_num=self.fps.numerator,
            fps_den=self.fps.denominator,
            gop=self.gop,
            codec_params=self.codec_params,
        )
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with ContainerWriter(out_path, header) as writer:
            # any order is fine for the container; payloads are fetched one at a time
            for g in ordered:
                payload = storage.get_bytes(g.key)
                if len(payload) != g.payload_bytes:
                    raise JobError(
                        "gop_missing",
                        f"GOP {g.index} payload {g.key!r} has {len(payload)} bytes, expected "
                        f"{g.payload_bytes}; it will be re-encoded on retry",
                        retryable=True,
                    )
                writer.add_gop(g.index, g.first_frame, g.n_frames, payload)
        return out_path.stat().st_size


@dataclass
class VerifyReport:
    """What decoding the assembled ``.gsv`` showed."""

    n_frames: int
    width: int
    height: int
    psnr_db: float  # mean of per-frame PSNR (8-bit RGB); identical frames count as the cap
    psnr_db_min: float
    ms_ssim: float  # mean of per-frame MS-SSIM
    ms_ssim_used_ssim_fallback: bool  # frames too small for 5 scales use single-scale SSIM
    decode_seconds: float
    per_gop: list[dict[str, float]] = field(default_factory=list)  # index, psnr_db, ms_ssim
    # DSS / HaarPSI (codec.perceptual) of the delivered output (None: frames too small)
    dss: float | None = None
    haarpsi: float | None = None
    # the enhancer (codec/enhance): record bytes over all GOPs, GOPs that carry one, and the
    # quality of the raw Gaussian output (decode_gop(..., enhance=False)) beside the delivered one
    enhancer_bytes: int = 0
    gops_enhanced: int = 0
    plain: dict[str, float | None] = field(default_factory=dict)


def _finite_psnr(value: float) -> float:
    return 100.0 if math.isinf(value) else float(value)  # JSON has no infinity


@dataclass(frozen=True)
class VerifyStage:
    """Decode the whole ``.gsv`` and compare it with the source video."""

    expected_frames: int
    gop: int

    def process(self, gsv_path: Path, source_path: Path, preview_path: Path | None) -> VerifyReport:
        from codec.container import ContainerReader
        from codec.errors import BitstreamError

        try:
            reader = ContainerReader(gsv_path)
        except BitstreamError as exc:
            raise JobError(
                "verify_failed", f"the assembled bitstream is unreadable: {exc}"
            ) from exc
        with reader:
            return self._verify(reader, source_path, preview_path)

    def _verify(self, reader: Any, source_path: Path, preview_path: Path | None) -> VerifyReport:
        from codec.bitstream import unpack_gop_enhanced
        from codec.enhance import EnhancerWeightsError, apply_enhancer
        from codec.errors import BitstreamError, VideoInputError
        from codec.gop import decode_gop
        from codec.metrics import clip_metrics, perceptual_metrics
        from codec.video import VideoWriter, iter_gops

        header = reader.header
        if reader.n_frames != self.expected_frames:
            raise JobError(
                "verify_failed",
                f"the bitstream holds {reader.n_frames} frames, expected {self.expected_frames}",
            )
        fps = Fraction(header.fps_num, header.fps_den)
        writer = (
            VideoWriter(preview_path, header.width, header.height, fps)
            if preview_path is not None
            else None
        )
        psnrs: list[float] = []
        ssims: list[float] = []
        fallback = False
        per_gop: list[dict[str, float]] = []
        decode_seconds = 0.0
        quality = _QualitySums()
        plain_quality = _QualitySums()
        enhancer_bytes = gops_enhanced = 0
        source: Iterator[tuple[int, np.ndarray]] = iter_gops(
            source_path, self.gop, max_frames=self.expected_frames
        )
        try:
            for entry in reader.gops:
                start = time.perf_counter()
                try:
                    payload = reader.read_gop(entry.index)
                    record = unpack_gop_enhanced(payload)[2]
                    plain = decode_gop(payload, enhance=False)
                    recon = apply_enhancer(record, plain) if record else plain
                except (BitstreamError, EnhancerWeightsError) as exc:
                    raise JobError(
                        "verify_failed", f"GOP {entry.index} does not decode: {exc}"
                    ) from exc
                decode_seconds += time.perf_counter() - start
                enhancer_bytes += len(record)
                gops_enhanced += bool(record)
                expected_shape = (entry.n_frames, header.height, header.width, 3)
                if tuple(recon.shape) != expected_shape:
                    raise JobError(
                        "verify_failed",
                        f"GOP {entry.index} decodes to shape {tuple(recon.shape)}, "
                        f"expected {expected_shape}",
                    )
                try:
                    first, orig = next(source)
                except (StopIteration, VideoInputError) as exc:
                    raise JobError(
                        "input_corrupt",
                        f"the source video could not be re-read at GOP {entry.index}: {exc}",
                    ) from exc
                if first != entry.first_frame or orig.shape != recon.shape:
                    raise JobError(
                        "verify_failed",
                        f"GOP {entry.index} covers frames from {entry.first_frame} "
                        f"({entry.n_frames}) but the source GOP starts at {first} "
                        f"({orig.shape[0]})",
                    )
                metrics = clip_metrics(orig, recon)  # per-frame PSNR, MS-SSIM in batches
                quality.add(orig, recon, metrics, perceptual_metrics(orig, recon))
                if record:
                    plain_metrics = clip_metrics(orig, plain)
                    plain_quality.add(orig, plain, plain_metrics, perceptual_metrics(orig, plain))
                else:
                    plain_quality.add(orig, plain, metrics, quality.last_perceptual)
                gop_psnr = [_finite_psnr(v) for v in metrics["psnr_db_per_frame"]]
                gop_ssim = [float(v) for v in metrics["ms_ssim_per_frame"]]
                fallback = fallback or bool(metrics["ms_ssim_is_ssim"])
                if writer is not None:
                    for frame in recon:
                        writer.write(frame)
                psnrs.extend(gop_psnr)
                ssims.extend(gop_ssim)
                per_gop.append(
                    {
                        "index": float(entry.index),
                        "psnr_db": float(np.mean(gop_psnr)),
                        "ms_ssim": float(np.mean(gop_ssim)),
                    }
                )
        finally:
            if writer is not None:
                writer.close()
        return VerifyReport(
            n_frames=len(psnrs),
            width=header.width,
            height=header.height,
            psnr_db=float(np.mean(psnrs)),
            psnr_db_min=float(np.min(psnrs)),
            ms_ssim=float(np.mean(ssims)),
            ms_ssim_used_ssim_fallback=fallback,
            decode_seconds=decode_seconds,
            per_gop=per_gop,
            dss=quality.mean("dss"),
            haarpsi=quality.mean("haarpsi"),
            enhancer_bytes=enhancer_bytes,
            gops_enhanced=gops_enhanced,
            plain={k: plain_quality.mean(k) for k in ("psnr_db", "ms_ssim", "dss", "haarpsi")},
        )


class _QualitySums:
    """Frame-weighted sums of per-GOP quality figures (a metric that is None anywhere stays None)."""

    def __init__(self) -> None:
        self.sums: dict[str, float | None] = {}
        self.frames = 0
        self.last_perceptual: dict[str, float | None] = {}

    def add(
        self,
        orig: np.ndarray,
        out: np.ndarray,
        metrics: dict[str, Any],
        perceptual: dict[str, float | None],
    ) -> None:
        n = int(orig.shape[0])
        self.last_perceptual = perceptual
        values: dict[str, float | None] = {
            "psnr_db": float(np.mean([_finite_psnr(v) for v in metrics["psnr_db_per_frame"]])),
            "ms_ssim": float(np.mean(metrics["ms_ssim_per_frame"])),
            **perceptual,
        }
        for key, value in values.items():
            prev = self.sums.get(key, 0.0)
            self.sums[key] = None if value is None or prev is None else prev + value * n
        self.frames += n

    def mean(self, key: str) -> float | None:
        total = self.sums.get(key)
        return None if total is None or not self.frames else total / self.frames


def build_manifest(
    gsv_path: Path,
    gops: Sequence[GopRecord],
    *,
    job_id: str,
    video_key: str,
    verify: VerifyReport | None = None,
) -> dict[str, Any]:
    """The GOP list with byte ranges in the ``.gsv`` and per-GOP bits and quality.

    ``chunk_offset`` is where the GOP's chunk starts in the file; its payload is
    the last ``payload_bytes`` bytes of the chunk (``docs/FORMAT.md``).
    """
    from codec.container import ContainerReader

    by_index = {g.index: g for g in gops}
    quality = {int(q["index"]): q for q in (verify.per_gop if verify else [])}
    with ContainerReader(gsv_path) as reader:
        header = reader.header
        n_frames = reader.n_frames
        entries: list[dict[str, Any]] = []
        for entry in reader.gops:
            g = by_index.get(entry.index)
            q = quality.get(entry.index, {})
            pixels = header.width * header.height * entry.n_frames
            entries.append(
                {
                    "index": entry.index,
                    "first_frame": entry.first_frame,
                    "n_frames": entry.n_frames,
                    "chunk_offset": entry.offset,
                    "payload_bytes": entry.length,
                    "crc32": entry.crc,
                    "bits": entry.length * 8,
                    "bits_per_pixel": entry.length * 8 / pixels if pixels else 0.0,
                    "encode_psnr_db": g.psnr_db if g else None,
                    "encode_seconds": g.encode_seconds if g else None,
                    "psnr_db": q.get("psnr_db"),
                    "ms_ssim": q.get("ms_ssim"),
                }
            )
    return {
        "manifest_version": MANIFEST_VERSION,
        "job_id": job_id,
        "video_key": video_key,
        "bytes": gsv_path.stat().st_size,
        "width": header.width,
        "height": header.height,
        "fps": f"{header.fps_num}/{header.fps_den}",
        "gop": header.gop,
        "n_frames": n_frames,
        "codec_params": header.codec_params,
        "gops": entries,
    }


def speed_report(gops: Sequence[GopRecord]) -> dict[str, Any]:
    """Seconds per I-frame and P-frame and fit iterations run, over the frames whose stats are
    known (``frames_measured``: GOPs resumed from an earlier attempt carry none)."""
    frames = [f for g in gops for f in g.frames]
    out: dict[str, Any] = {"frames_measured": len(frames)}
    for kind in ("I", "P"):
        mine = [f for f in frames if f.get("kind") == kind]
        tag = kind.lower()
        out[f"{tag}_frames"] = len(mine)
        for key, name in (("encode_seconds", "seconds"), ("iters", "iters")):
            values = [float(f[key]) for f in mine if f.get(key) is not None]
            out[f"{tag}_frame_{name}_mean"] = float(np.mean(values)) if values else None
        out[f"{tag}_frame_iters_total"] = int(sum(int(f.get("iters") or 0) for f in mine))
    return out


def target_report(gops: Sequence[GopRecord]) -> dict[str, Any] | None:
    """report.json ``target`` (None without a quality target): what was asked, GOPs in the band,
    unreachable GOPs, mean overshoot, the search's cost (codec.target.summarize), and ``per_gop``:
    each GOP's search (target, reached, status, quality level, trials)."""
    from codec.target import summarize

    per_gop = [
        {"gop": g.index, **g.target} for g in sorted(gops, key=lambda g: g.index) if g.target
    ]
    summary = summarize(per_gop)
    return None if summary is None else {**summary, "per_gop": per_gop}


def config_enhance(config: dict[str, Any]) -> str:
    """The enhancer mode a (compact or full) codec config dict asks for."""
    overrides = config.get("overrides", {})
    value = config.get(
        "enhance", overrides.get("enhance", "off") if isinstance(overrides, dict) else "off"
    )
    return str(value)


def build_report(
    *,
    job_id: str,
    gsv_bytes: int,
    width: int,
    height: int,
    n_frames: int,
    gops: Sequence[GopRecord],
    verify: VerifyReport,
    timings_s: dict[str, float],
    config: dict[str, Any],
    preset: str,
    quality: int,
) -> dict[str, Any]:
    """The quality report: size, bits per pixel, PSNR, MS-SSIM and timings."""
    pixels = width * height * max(n_frames, 1)
    encode_psnrs = [g.psnr_db for g in gops if g.psnr_db is not None]
    return {
        "job_id": job_id,
        "width": width,
        "height": height,
        "n_frames": n_frames,
        "n_gops": len(gops),
        "bytes": gsv_bytes,
        "bits_per_pixel": gsv_bytes * 8 / pixels,
        "psnr_db": verify.psnr_db,
        "psnr_db_min": verify.psnr_db_min,
        "ms_ssim": verify.ms_ssim,
        "ms_ssim_used_ssim_fallback": verify.ms_ssim_used_ssim_fallback,
        # what ``ms_ssim`` holds, by its honest name: "SSIM" when the frames were too small for
        # the 5-scale metric and single-scale SSIM was computed instead
        "ssim_metric": ssim_label(verify.ms_ssim_used_ssim_fallback),
        "dss": verify.dss,
        "haarpsi": verify.haarpsi,
        # the delivered output above is enhanced where a GOP carries an enhancer record;
        # "plain" is the raw Gaussian output of the same file (decode --no-enhance)
        "enhance": {
            "requested": config_enhance(config),
            "gops_enhanced": verify.gops_enhanced,
            "enhancer_bytes": verify.enhancer_bytes,
            "enhancer_share_of_bytes": verify.enhancer_bytes / gsv_bytes if gsv_bytes else 0.0,
            "plain": dict(verify.plain),
            "enhanced": {
                "psnr_db": verify.psnr_db,
                "ms_ssim": verify.ms_ssim,
                "dss": verify.dss,
                "haarpsi": verify.haarpsi,
            },
        },
        "encode_psnr_db": float(np.mean(encode_psnrs)) if encode_psnrs else None,
        "gop_encode_seconds_total": float(sum(g.encode_seconds or 0.0 for g in gops)),
        "decode_seconds": verify.decode_seconds,
        "speed": speed_report(gops),
        "target": target_report(gops),
        "timings_s": dict(timings_s),
        "preset": preset,
        "quality": quality,
        "config": config,
    }
