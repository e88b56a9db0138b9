"""Whole-video helpers that stream GOP by GOP (a long video is never held in memory).

:func:`encode_video` encodes the GOPs of a multi-GOP clip in parallel worker processes by
default (``workers``: one per usable core, at most one per GOP; the cores split between them
as torch intra-op threads). A GOP depends on nothing outside itself, so each worker runs the
same :func:`codec.gop.encode_gop_report` a sequential encode runs and the file is the same,
byte for byte, for the same threads per GOP. The fit's floating-point sums may be split
differently across more intra-op threads, so the number of threads per GOP is part of what
makes the bytes: ``threads`` fixes it (default: usable cores // workers). Workers are
spawned (not forked: torch's thread pools do not survive a fork) and fed at most two GOPs
each ahead of the writer, so memory stays bounded on long videos.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from codec.bitstream import DEFAULT_LIMITS, DecodeLimits
from codec.config import CodecConfig
from codec.container import ContainerReader, ContainerWriter, Damage, StreamHeader, open_gsv
from codec.errors import BitstreamError, CodecConfigError, CodecError
from codec.gop import GopEncodeResult, iter_gop_frames
from codec.init import detect_face_roi, load_roi_mask
from codec.render import resolve_backend_name
from codec.target import encode_gop_target, summarize
from codec.video import VideoWriter, iter_frames, probe, y4m_frame_bytes, y4m_header

ProgressFn = Callable[[int, int | None], None]  # (frames done, frames total if known)
RoiSpec = str | Path | None  # None, "face" (detected per GOP), or a mask image path


@dataclass
class EncodeSummary:
    """The figures ``splatpack encode`` prints, measured on what was written."""

    out_path: str
    width: int
    height: int
    fps: str
    n_frames: int
    n_gops: int
    n_bytes: int
    bits_per_pixel: float
    psnr_db: float  # mean of per-frame PSNR on 8-bit RGB
    i_frame_bytes_mean: float
    p_frame_bytes_mean: float | None
    encode_seconds: float
    frames: list[dict[str, object]] = field(default_factory=list)
    # speed: wall seconds each frame's coding took (inside its worker) and the fit iterations run
    i_frame_seconds_mean: float = 0.0
    p_frame_seconds_mean: float | None = None
    i_frame_iters_mean: float = 0.0
    p_frame_iters_mean: float | None = None
    workers: int = 1  # processes that encoded GOPs (1: in this process)
    threads: int = 1  # torch intra-op threads per GOP encode
    # the enhancer (config.enhance): record bytes per GOP (0: none), all counted in n_bytes
    enhancer_bytes_per_gop: list[int] = field(default_factory=list)
    # target-quality mode (config.target_psnr / target_msssim, codec/target.py): the whole
    # encode's figures (codec.target.summarize: target, GOPs in the band, search cost) and each
    # GOP's search (GopTargetReport.to_dict() plus "gop"); None / empty without a target
    target: dict[str, Any] | None = None
    target_gops: list[dict[str, Any]] = field(default_factory=list)

    @property
    def encode_fps(self) -> float:
        return self.n_frames / self.encode_seconds if self.encode_seconds > 0 else 0.0


def _grouped(frames: Iterator[np.ndarray], gop: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(first, uint8 [T, H, W, 3])`` runs of ``gop`` frames (the last may be shorter)."""
    first = 0
    while True:
        chunk = list(itertools.islice(frames, gop))
        if not chunk:
            return
        yield first, np.stack(chunk)
        first += len(chunk)


MAX_WORKERS = 256


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def plan_parallelism(
    n_gops: int | None, workers: int | None, threads: int | None, device: str = "cpu"
) -> tuple[int, int]:
    """(worker processes, torch threads per GOP encode) for a clip of ``n_gops`` GOPs (None:
    unknown). Defaults: one worker per usable core, at most one per GOP, one only off the CPU
    (a GPU is not shared between processes here); threads: the cores split between workers."""
    for name, value in (("workers", workers), ("threads", threads)):
        if value is not None and not (isinstance(value, int) and 1 <= value <= MAX_WORKERS):
            raise CodecConfigError(f"{name}={value!r} is out of range; use 1..{MAX_WORKERS}")
    cores = usable_cores()
    if workers is None:
        workers = 1 if device != "cpu" else min(cores, n_gops if n_gops is not None else cores)
    if n_gops is not None:
        workers = max(1, min(workers, n_gops))
    if threads is None:
        threads = max(1, cores // workers)
    return workers, threads


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


GopOutcome = tuple[bytes, list[dict[str, object]], int, dict[str, Any] | None]


def _gop_outcome(result: GopEncodeResult, target: dict[str, Any] | None) -> GopOutcome:
    return result.payload, result.stats_dicts(), result.enhancer_bytes, target


def _encode_gop_task(
    frames: np.ndarray, config: CodecConfig, roi_mask: np.ndarray | None, device: str
) -> GopOutcome:
    """What a worker process runs for one GOP: (payload, per-frame stats, enhancer bytes, the
    target search's report or None)."""
    result, report = encode_gop_target(frames, config, roi_mask=roi_mask, device=device)
    return _gop_outcome(result, report.to_dict() if report is not None else None)


def encode_video(
    in_path: str | Path,
    out_path: str | Path | BinaryIO,
    config: CodecConfig,
    *,
    max_frames: int | None = None,
    start_frame: int = 0,
    roi: RoiSpec = None,
    progress: ProgressFn | None = None,
    device: str = "cpu",
    workers: int | None = None,
    threads: int | None = None,
) -> EncodeSummary:
    """Encode frames ``start_frame ..`` (at most ``max_frames``) of a video file into a ``.gsv``
    GOP by GOP; returns measured figures. ``out_path`` is a path (written atomically) or a
    binary stream such as stdout.

    ``device`` is where the fits run ("cpu", "cuda" or "auto"; see :func:`codec.gop.encode_gop_report`).
    ``workers`` processes encode GOPs in parallel and ``threads`` torch threads run each GOP's
    encode (defaults: :func:`plan_parallelism`); the file is the same for any ``workers`` at the
    same ``threads``. With one worker the GOPs are encoded in this process, which then runs
    ``threads`` torch threads while it encodes (only when ``threads`` is given)."""
    if max_frames is not None and max_frames < 1:
        raise CodecConfigError(f"max_frames={max_frames} must be at least 1")
    if start_frame < 0:
        raise CodecConfigError(f"start_frame={start_frame} must be at least 0")
    info = probe(in_path)
    if info.n_frames is not None and start_frame >= info.n_frames:
        raise CodecConfigError(
            f"start_frame={start_frame} is past the input's {info.n_frames} frames "
            f"(0..{info.n_frames - 1})"
        )
    left = None if info.n_frames is None else info.n_frames - start_frame
    total = left if max_frames is None else min(max_frames, left or max_frames)
    n_gops = math.ceil(total / config.gop) if total else None
    workers_given_threads = threads is not None
    workers, threads = plan_parallelism(n_gops, workers, threads, device)
    # "auto" is resolved once, here: a worker that could not load the backend this process uses
    # must fail, not fit with another one (and write other bytes)
    fit_config = config.with_overrides(backend=resolve_backend_name(config.backend, device))
    header = StreamHeader(
        width=info.width,
        height=info.height,
        fps_num=info.fps.numerator,
        fps_den=info.fps.denominator,
        gop=config.gop,
        codec_params=config.to_compact(),
    )
    detect_faces = roi is not None and str(roi) == "face"
    file_mask: np.ndarray | None = None  # a mask file is read once; faces are detected per GOP
    if roi is not None and not detect_faces:
        file_mask = load_roi_mask(Path(roi), info.height, info.width).numpy()
    frames_done = 0
    stats: list[dict[str, object]] = []
    enhancer_bytes: list[int] = []
    target_gops: list[dict[str, Any]] = []
    start = time.perf_counter()
    target = out_path if hasattr(out_path, "write") else Path(out_path)  # type: ignore[arg-type]
    end = None if max_frames is None else start_frame + max_frames
    source = itertools.islice(iter_frames(in_path, end), start_frame, None)

    def gops() -> Iterator[tuple[int, int, np.ndarray, np.ndarray | None]]:
        for gop_index, (first, frames) in enumerate(_grouped(source, config.gop)):
            yield (
                gop_index,
                first,
                frames,
                detect_face_roi(frames[0]) if detect_faces else file_mask,
            )

    def add(
        writer: ContainerWriter, gop_index: int, first: int, n: int, outcome: GopOutcome
    ) -> None:
        nonlocal frames_done
        payload, gop_stats, gop_enhancer_bytes, gop_target = outcome
        writer.add_gop(gop_index, first, n, payload)
        enhancer_bytes.append(gop_enhancer_bytes)
        if gop_target is not None:
            target_gops.append({"gop": gop_index, **gop_target})
        for s in gop_stats:
            s["index"] = first + int(s["index"])  # type: ignore[call-overload]
            s["gop"] = gop_index
            stats.append(s)
        frames_done += n

    with ContainerWriter(target, header) as writer:  # type: ignore[arg-type]
        if workers == 1:
            saved_threads = torch.get_num_threads()
            if workers_given_threads:
                torch.set_num_threads(threads)
            try:
                for gop_index, first, frames, gop_mask in gops():
                    base = frames_done

                    def on_frame(done: int, _total: int, base: int = base) -> None:
                        if progress:
                            progress(base + done, total)

                    result, report = encode_gop_target(
                        frames, fit_config, roi_mask=gop_mask, device=device, progress=on_frame
                    )
                    gop_target = report.to_dict() if report is not None else None
                    add(writer, gop_index, first, len(frames), _gop_outcome(result, gop_target))
            finally:
                torch.set_num_threads(saved_threads)
        else:
            _encode_parallel(
                gops(), writer, fit_config, device, workers, threads, add, progress, total
            )
        if frames_done == 0:  # leaves no output: the writer aborts
            raise CodecConfigError(f"no frames to encode from frame {start_frame} of {in_path}")
    seconds = time.perf_counter() - start
    n_bytes = writer.bytes_written
    i_sizes = [int(s["n_bytes"]) for s in stats if s["kind"] == "I"]  # type: ignore[call-overload]
    p_sizes = [int(s["n_bytes"]) for s in stats if s["kind"] == "P"]  # type: ignore[call-overload]

    def mean_of(key: str, kind: str) -> float | None:
        values = [float(s[key]) for s in stats if s["kind"] == kind]  # type: ignore[arg-type]
        return float(np.mean(values)) if values else None

    return EncodeSummary(
        out_path=str(out_path) if isinstance(out_path, (str, Path)) else "-",
        width=info.width,
        height=info.height,
        fps=str(info.fps),
        n_frames=frames_done,
        n_gops=len(i_sizes),
        n_bytes=n_bytes,
        bits_per_pixel=n_bytes * 8 / (info.width * info.height * max(frames_done, 1)),
        psnr_db=float(np.mean([float(s["psnr_db"]) for s in stats])),  # type: ignore[arg-type]
        i_frame_bytes_mean=float(np.mean(i_sizes)),
        p_frame_bytes_mean=float(np.mean(p_sizes)) if p_sizes else None,
        encode_seconds=seconds,
        frames=stats,
        i_frame_seconds_mean=mean_of("encode_seconds", "I") or 0.0,
        p_frame_seconds_mean=mean_of("encode_seconds", "P"),
        i_frame_iters_mean=mean_of("iters", "I") or 0.0,
        p_frame_iters_mean=mean_of("iters", "P"),
        workers=workers,
        threads=threads,
        enhancer_bytes_per_gop=enhancer_bytes,
        target=summarize(target_gops),
        target_gops=target_gops,
    )


AddFn = Callable[[ContainerWriter, int, int, int, GopOutcome], None]


def _encode_parallel(
    gops: Iterator[tuple[int, int, np.ndarray, np.ndarray | None]],
    writer: ContainerWriter,
    config: CodecConfig,
    device: str,
    workers: int,
    threads: int,
    add: AddFn,
    progress: ProgressFn | None,
    total: int | None,
) -> None:
    """Encode ``gops`` in ``workers`` spawned processes, at most 2 per worker in flight, adding
    each to ``writer`` as it completes (the container accepts GOPs in any order)."""
    context = multiprocessing.get_context("spawn")
    pending: dict[Future[GopOutcome], tuple[int, int, int]] = {}
    done_frames = 0

    def collect(block_until_below: int) -> None:
        nonlocal done_frames
        while len(pending) > block_until_below:
            future = next(iter(pending))  # oldest first: the file and progress grow in order
            gop_index, first, n = pending.pop(future)
            add(writer, gop_index, first, n, future.result())
            done_frames += n
            if progress:
                progress(done_frames, total)

    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(threads,)
    )
    try:
        for gop_index, first, frames, gop_mask in gops:
            future = pool.submit(_encode_gop_task, frames, config, gop_mask, device)
            pending[future] = (gop_index, first, len(frames))
            collect(2 * workers - 1)
        collect(0)
    except BrokenProcessPool as exc:
        raise CodecError(
            "an encoder worker process died (killed, or out of memory?); nothing was written. "
            "Retry with fewer workers (--workers 1 encodes in one process)"
        ) from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def iter_decoded(
    gsv_path: str | Path | bytes,
    start_frame: int = 0,
    n_frames: int | None = None,
    *,
    limits: DecodeLimits = DEFAULT_LIMITS,
    salvage: bool = False,
    damage: list[Damage] | None = None,
    reader: ContainerReader | None = None,
    enhance: bool = True,
) -> Iterator[np.ndarray]:
    """Decoded frames (uint8 [H, W, 3]) ``start_frame .. start_frame + n_frames - 1`` (to the end
    when ``n_frames`` is None), one at a time: the GOP index finds the first GOP, and only the
    frames asked for are kept in memory. ``enhance=False`` skips GOPs' enhancer records (the raw
    Gaussian output, ``decode --no-enhance``).

    Without ``salvage`` the first damaged GOP raises BitstreamError. With it, a damaged GOP is
    skipped (its frames are not yielded) and recorded in ``damage``, as are GOPs lost from a
    cut-off file; the frames of intact GOPs are exactly those of an undamaged decode."""
    if reader is None:
        reader, known = open_gsv(gsv_path, limits=limits, salvage=salvage)
        if damage is not None:
            damage.extend(known)
    if not 0 <= start_frame < max(reader.n_frames, 1):
        raise CodecConfigError(
            f"the start frame {start_frame} is outside the stream's frames 0..{reader.n_frames - 1}"
        )
    if n_frames is not None and n_frames < 1:
        raise CodecConfigError(f"the frame count {n_frames} must be at least 1")
    end = reader.n_frames if n_frames is None else min(reader.n_frames, start_frame + n_frames)
    h = reader.header
    for pos in range(reader.gop_for_frame(start_frame), len(reader.gops)):
        entry = reader.gops[pos]
        if entry.first_frame >= end:
            break
        lo = max(start_frame, entry.first_frame) - entry.first_frame
        hi = min(end, entry.first_frame + entry.n_frames) - entry.first_frame
        done = lo  # frames of this GOP handed out so far (from lo)
        try:
            payload = reader.read_gop(pos)
            frames = iter_gop_frames(
                payload, limits, (entry.n_frames, h.width, h.height), enhance=enhance
            )
            for t, frame in enumerate(frames):
                if t >= hi:
                    break
                if t >= lo:
                    yield frame
                    done = t + 1
        except BitstreamError as exc:
            if not salvage:
                raise
            if damage is not None:
                damage.append(Damage(entry.index, entry.first_frame + done, hi - done, str(exc)))


def decode_video(
    gsv_path: str | Path | bytes,
    out_path: str | Path,
    *,
    start_frame: int = 0,
    n_frames: int | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
    salvage: bool = False,
    damage: list[Damage] | None = None,
    reader: ContainerReader | None = None,
    enhance: bool = True,
) -> int:
    """Decode a ``.gsv`` file to ``.mp4``, ``.y4m`` or a directory of PNGs; returns frames written.
    ``enhance=False`` writes the raw Gaussian output (GOPs' enhancer records are skipped).

    The output appears complete or not at all (written under a temporary name, fsynced, renamed);
    a decode error leaves nothing behind. With ``salvage`` the intact GOPs are written and the
    damaged ones recorded in ``damage`` (the caller decides whether that is a failure). A
    ``reader`` already opened by :func:`open_gsv` is used as is (its known damage not repeated)."""
    if reader is None:
        reader, known = open_gsv(gsv_path, limits=limits, salvage=salvage)
        if damage is not None:
            damage.extend(known)
    h = reader.header
    written = 0
    with atomic_output(Path(out_path)) as tmp:
        with VideoWriter(tmp, h.width, h.height, Fraction(h.fps_num, h.fps_den)) as writer:
            for frame in iter_decoded(
                gsv_path, start_frame, n_frames, limits=limits, salvage=salvage,
                damage=damage, reader=reader, enhance=enhance,
            ):  # fmt: skip
                writer.write(frame)
                written += 1
        if written == 0:
            raise BitstreamError("no frame could be decoded; nothing was written")
    return written


def write_y4m_stream(
    out: BinaryIO, frames: Iterable[np.ndarray], width: int, height: int, fps: Fraction
) -> int:
    """Write frames (uint8 [H, W, 3]) as a YUV4MPEG2 stream (``y4m_format`` 444p10, like .y4m
    files) to a binary stream such as stdout; returns the frames written."""
    out.write(y4m_header(width, height, fps, "444p10"))
    n = 0
    for frame in frames:
        out.write(b"FRAME\n" + y4m_frame_bytes(frame, "444p10"))
        n += 1
    out.flush()
    return n


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path next to ``path`` (same suffix) to write into; on success it is fsynced and
    renamed onto ``path`` (replacing a file, or a directory of PNG frames), on failure removed.
    The caller decides beforehand whether ``path`` may be replaced."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CodecConfigError(f"cannot write {path}: the folder {parent} does not exist")
    is_dir_output = path.suffix == "" or path.is_dir()
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp"))
    target = tmp if is_dir_output else tmp / path.name
    try:
        yield target
        if is_dir_output:
            for f in target.iterdir():
                _fsync_path(f)
            if path.is_dir():
                shutil.rmtree(path)
            os.replace(target, path)
        else:
            _fsync_path(target)
            os.replace(target, path)
            shutil.rmtree(tmp, ignore_errors=True)
        _fsync_path(parent, directory=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_path(path: Path, directory: bool = False) -> None:
    """fsync a file (or, best effort, a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def enhancer_bytes_per_gop(gsv_path: str | Path) -> list[int]:
    """Bytes of each GOP's enhancer record (0: none, or a GOP of a format before 6), for ``info``."""
    from codec.bitstream import unpack_gop_enhanced

    reader = ContainerReader(Path(gsv_path))
    return [len(unpack_gop_enhanced(reader.read_gop(e.index))[2]) for e in reader.gops]
