"""Whole-video helpers that stream GOP by GOP (a long video is never held in memory)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from codec.config import CodecConfig
from codec.container import ContainerReader, ContainerWriter, StreamHeader
from codec.errors import CodecConfigError
from codec.gop import decode_gop, encode_gop_report
from codec.init import detect_face_roi, load_roi_mask
from codec.video import VideoWriter, iter_gops, probe

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
    # the enhancer (config.enhance): record bytes per GOP (0: none), all counted in n_bytes
    enhancer_bytes_per_gop: list[int] = field(default_factory=list)

    @property
    def encode_fps(self) -> float:
        return self.n_frames / self.encode_seconds if self.encode_seconds > 0 else 0.0


def encode_video(
    in_path: str | Path,
    out_path: str | Path,
    config: CodecConfig,
    *,
    max_frames: int | None = None,
    roi: RoiSpec = None,
    progress: ProgressFn | None = None,
    device: str = "cpu",
) -> EncodeSummary:
    """Encode a video file into a ``.gsv`` file GOP by GOP; returns measured figures.

    ``device`` is where the fits run ("cpu", "cuda" or "auto"; see :func:`codec.gop.encode_gop_report`)."""
    if max_frames is not None and max_frames < 1:
        raise CodecConfigError(f"max_frames={max_frames} must be at least 1")
    info = probe(in_path)
    total = info.n_frames if max_frames is None else min(max_frames, info.n_frames or max_frames)
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
    start = time.perf_counter()
    with ContainerWriter(Path(out_path), header) as writer:
        for gop_index, (first, frames) in enumerate(iter_gops(in_path, config.gop, max_frames)):
            gop_mask = detect_face_roi(frames[0]) if detect_faces else file_mask
            base = frames_done

            def on_frame(done: int, _total: int, base: int = base) -> None:
                if progress:
                    progress(base + done, total)

            result = encode_gop_report(
                frames, config, roi_mask=gop_mask, progress=on_frame, device=device
            )
            writer.add_gop(gop_index, first, len(frames), result.payload)
            enhancer_bytes.append(result.enhancer_bytes)
            for s in result.stats_dicts():
                s["index"] = first + int(s["index"])  # type: ignore[call-overload]
                s["gop"] = gop_index
                stats.append(s)
            frames_done += len(frames)
    seconds = time.perf_counter() - start
    n_bytes = Path(out_path).stat().st_size
    i_sizes = [int(s["n_bytes"]) for s in stats if s["kind"] == "I"]  # type: ignore[call-overload]
    p_sizes = [int(s["n_bytes"]) for s in stats if s["kind"] == "P"]  # type: ignore[call-overload]
    return EncodeSummary(
        out_path=str(out_path),
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
        enhancer_bytes_per_gop=enhancer_bytes,
    )


def iter_decoded(
    gsv_path: str | Path, start_frame: int = 0, *, enhance: bool = True
) -> Iterator[np.ndarray]:
    """Decoded frames (uint8 [H, W, 3]) from ``start_frame`` on, decoding only the GOPs needed;
    ``enhance=False`` skips the enhancer (the raw Gaussian output, ``decode --no-enhance``)."""
    reader = ContainerReader(Path(gsv_path))
    if not 0 <= start_frame < max(reader.n_frames, 1):
        raise CodecConfigError(f"start_frame={start_frame} is outside 0..{reader.n_frames - 1}")
    first_gop = reader.gop_for_frame(start_frame)
    for entry in reader.gops[first_gop:]:
        frames = decode_gop(reader.read_gop(entry.index), enhance=enhance)
        skip = max(0, start_frame - entry.first_frame)
        yield from frames[skip:]


def decode_video(gsv_path: str | Path, out_path: str | Path, *, enhance: bool = True) -> int:
    """Decode a ``.gsv`` file to ``.mp4``, ``.y4m`` or a directory of PNGs; returns frames written.
    ``enhance=False`` writes the raw Gaussian output (GOPs' enhancer records are skipped)."""
    reader = ContainerReader(Path(gsv_path))
    h = reader.header
    written = 0
    with VideoWriter(Path(out_path), h.width, h.height, Fraction(h.fps_num, h.fps_den)) as writer:
        for frame in iter_decoded(gsv_path, enhance=enhance):
            writer.write(frame)
            written += 1
    return written


def enhancer_bytes_per_gop(gsv_path: str | Path) -> list[int]:
    """Bytes of each GOP's enhancer record (0: none, or a format-5 GOP), for ``info``."""
    from codec.bitstream import unpack_gop_enhanced

    reader = ContainerReader(Path(gsv_path))
    return [len(unpack_gop_enhanced(reader.read_gop(e.index))[2]) for e in reader.gops]
