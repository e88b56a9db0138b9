"""Benchmark harness behind ``splatpack bench CLIP``: rate-distortion against classic codecs.

Every codec, ours included, is reduced to :class:`RatePoint` values measured the
same way (MEASURING.md): quality against the decoded 8-bit RGB frames of the
clip (mean per-frame PSNR, MS-SSIM), rate in bits per pixel, speed in frames per
second. :func:`run_bench` measures the classic anchors, adds the points of any
codec passed as ``our_codec`` and writes ``results.json``, ``results.md`` (point
table and BD-rate table) and ``rd.png``.

Classic anchors (:func:`classic_codec_points`) go through PyAV: RGB -> yuv420p
(swscale defaults: BT.601 limited range, bilinear chroma), encode, decode, back
to RGB with the same defaults. Conventions, each chosen so that a figure depends
on the content only:

- bpp counts every coded packet byte (parameter sets in band, no container).
  x265 runs with ``info=0``: its 2 KB version/options SEI is not needed to decode
  and would double the rate of a small clip. x264 has no such switch; its ~0.6 KB
  SEI is counted (0.0003 bpp on 176x144x60).
- The encoders are driven at a nominal 25 fps (``rc_fps``), whatever the clip's
  rate. x264 and x265 normalise their CRF rate control to 25 fps frames, so at
  another rate a CRF value lands elsewhere on the same RD curve (about 0.3 dB up
  the curve going from 29.97 to 25 fps on carphone, with the curve itself within
  0.02 dB). The clip's rate is recorded in the report.
- x264 uses frame threads: output then does not depend on the number of CPUs.
  PyAV's default (sliced threads, one slice per core, capped by the frame
  height) makes x264 output depend on the machine, costs x264 up to 20% rate on
  small frames and is not always bit-reproducible; ``x264_sliced_threads=2``
  restores it as used for the reference table in ``shared/data/README.md``.
- encode fps include RGB -> YUV conversion and decode fps YUV -> RGB, like a
  codec that takes and returns RGB frames; on a shared machine compare ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, cast

import av
import numpy as np
from av.video.codeccontext import VideoCodecContext

from codec.errors import CodecConfigError, CodecError
from codec.metrics import bd_rate, bits_per_pixel, clip_metrics
from codec.video import iter_frames, probe

ClassicCodec = Literal["x264", "x265", "svtav1"]
CLASSIC_CODECS: tuple[ClassicCodec, ...] = ("x264", "x265", "svtav1")
CLASSIC_SETTINGS: dict[str, list[int]] = {
    "x264": [23, 28, 33, 38, 43],
    "x265": [23, 28, 33, 38, 43],
    "svtav1": [30, 40, 50, 58, 63],
}
NOMINAL_RC_FPS = Fraction(25)
PIX_FMT = "yuv420p"


@dataclass(frozen=True)
class _ClassicSpec:
    encoder: str
    options: dict[str, str]
    decoders: tuple[str, ...]  # first one available is used


_SPECS: dict[str, _ClassicSpec] = {
    "x264": _ClassicSpec("libx264", {"preset": "medium"}, ("h264",)),
    "x265": _ClassicSpec(
        "libx265", {"preset": "medium", "x265-params": "info=0:log-level=error"}, ("hevc",)
    ),
    "svtav1": _ClassicSpec("libsvtav1", {"preset": "8"}, ("libdav1d", "libaom-av1", "av1")),
}


@dataclass
class RatePoint:
    """One rate-distortion point of one codec on one clip."""

    codec: str  # "x264", "x265", "svtav1", or the Gaussian codec's name
    setting: int | str  # CRF for classic codecs; the codec's own quality knob otherwise
    bpp: float
    psnr_db: float  # mean per-frame RGB PSNR, 2 decimals
    ms_ssim: float  # mean per-frame MS-SSIM (SSIM when extra["ms_ssim_is_ssim"])
    encode_fps: float
    decode_fps: float
    extra: dict[str, Any] = field(default_factory=dict)


def classic_codec_status(codec: str) -> str | None:
    """None when ``codec`` can be encoded and decoded with this PyAV build, else the reason not."""
    spec = _SPECS.get(codec)
    if spec is None:
        return f"unknown classic codec {codec!r}; known: {', '.join(CLASSIC_CODECS)}"
    if spec.encoder not in av.codecs_available:
        return f"this PyAV/FFmpeg build has no {spec.encoder} encoder"
    if _decoder_for(spec) is None:
        return f"this PyAV/FFmpeg build has none of the decoders {', '.join(spec.decoders)}"
    return None


def _decoder_for(spec: _ClassicSpec) -> str | None:
    return next((d for d in spec.decoders if d in av.codecs_available), None)


def _check_frames(frames: np.ndarray) -> tuple[int, int, int]:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise CodecConfigError(
            f"frames must be uint8 [T, H, W, 3] with T >= 1; got {frames.dtype} {frames.shape}"
        )
    t, h, w = frames.shape[:3]
    if h % 2 or w % 2:
        raise CodecConfigError(
            f"classic codecs here encode {PIX_FMT}; need even width and height, got {w}x{h}"
        )
    return t, h, w


def _encode(
    frames: np.ndarray, spec: _ClassicSpec, crf: int, rc_fps: Fraction, x264_sliced_threads: int
) -> tuple[list[av.Packet], float]:
    """Encode uint8 [T, H, W, 3] -> (packets, wall seconds)."""
    t, h, w = frames.shape[:3]
    enc = cast(VideoCodecContext, av.CodecContext.create(spec.encoder, "w"))
    enc.width, enc.height, enc.pix_fmt = w, h, PIX_FMT
    enc.time_base = 1 / rc_fps
    enc.framerate = rc_fps
    if spec.encoder == "libx264" and x264_sliced_threads > 0:
        enc.thread_type, enc.thread_count = "SLICE", x264_sliced_threads
    else:
        enc.thread_type, enc.thread_count = "FRAME", 0
    enc.options = {**spec.options, "crf": str(crf)}
    packets: list[av.Packet] = []
    t0 = time.perf_counter()
    for i in range(t):
        vf = av.VideoFrame.from_ndarray(frames[i], format="rgb24").reformat(format=PIX_FMT)
        vf.pts = i
        packets.extend(enc.encode(vf))
    packets.extend(enc.encode(None))
    return packets, time.perf_counter() - t0


def _decode(
    packets: list[av.Packet], decoder: str, shape: tuple[int, ...]
) -> tuple[np.ndarray, float]:
    """Decode packets -> (uint8 [T, H, W, 3] RGB, wall seconds)."""
    dec = cast(VideoCodecContext, av.CodecContext.create(decoder, "r"))
    out = np.empty(shape, dtype=np.uint8)
    n = 0
    t0 = time.perf_counter()
    for packet in [*packets, None]:
        for frame in dec.decode(packet):
            if n >= shape[0]:
                raise RuntimeError(f"{decoder} returned more than the {shape[0]} frames encoded")
            out[n] = frame.to_ndarray(format="rgb24")
            n += 1
    seconds = time.perf_counter() - t0
    if n != shape[0]:
        raise RuntimeError(f"{decoder} returned {n} frames for the {shape[0]} encoded")
    return out, seconds


def classic_codec_points(
    frames: np.ndarray,
    fps: Fraction,
    codec: ClassicCodec,
    settings: Sequence[int],
    *,
    rc_fps: Fraction = NOMINAL_RC_FPS,
    x264_sliced_threads: int = 0,
) -> list[RatePoint]:
    """Rate points of a classic codec on uint8 [T, H, W, 3] RGB frames, one per CRF in ``settings``.

    ``fps`` is the clip's rate (recorded); the encoder runs at ``rc_fps`` (module
    doc). Raises CodecConfigError when the codec is unavailable in this build.
    """
    reason = classic_codec_status(codec)
    if reason is not None:
        raise CodecConfigError(reason)
    if rc_fps <= 0 or x264_sliced_threads < 0:
        raise CodecConfigError(
            f"need rc_fps > 0 and x264_sliced_threads >= 0; got {rc_fps}, {x264_sliced_threads}"
        )
    t, h, w = _check_frames(frames)
    spec = _SPECS[codec]
    decoder = _decoder_for(spec)
    assert decoder is not None  # checked by classic_codec_status
    points = []
    for crf in settings:
        packets, enc_s = _encode(frames, spec, int(crf), Fraction(rc_fps), x264_sliced_threads)
        n_bytes = sum(p.size for p in packets)
        recon, dec_s = _decode(packets, decoder, frames.shape)
        m = clip_metrics(frames, recon)
        points.append(
            RatePoint(
                codec=codec,
                setting=int(crf),
                bpp=bits_per_pixel(n_bytes, w, h, t),
                psnr_db=m["psnr_db"],
                ms_ssim=m["ms_ssim"],
                encode_fps=t / enc_s,
                decode_fps=t / dec_s,
                extra={
                    "encoder": spec.encoder,
                    "decoder": decoder,
                    "options": {**spec.options, "crf": str(crf)},
                    "pix_fmt": PIX_FMT,
                    "clip_fps": str(Fraction(fps)),
                    "rc_fps": str(Fraction(rc_fps)),
                    "threads": f"slice x{x264_sliced_threads}"
                    if codec == "x264" and x264_sliced_threads
                    else "frame",
                    "n_bytes": n_bytes,
                    "encode_s": enc_s,
                    "decode_s": dec_s,
                    "ms_ssim_is_ssim": m["ms_ssim_is_ssim"],
                    "psnr_db_per_frame": [round(v, 4) for v in m["psnr_db_per_frame"]],
                },
            )
        )
    return points


# --------------------------------------------------------------------------- report


def _by_codec(points: Sequence[RatePoint]) -> dict[str, list[RatePoint]]:
    out: dict[str, list[RatePoint]] = {}
    for p in points:
        out.setdefault(p.codec, []).append(p)
    return out


def bd_rate_table(points: Sequence[RatePoint]) -> dict[str, dict[str, float | str]]:
    """BD-rate (PSNR) of every codec against each classic codec present: ``table[codec][anchor]``.

    Values are percentages, or ``"no overlap"``, or ``"n/a: ..."`` when a curve
    has fewer than four distinct points.
    """
    groups = _by_codec(points)
    anchors = [c for c in CLASSIC_CODECS if c in groups]
    table: dict[str, dict[str, float | str]] = {}
    for codec, pts in groups.items():
        row: dict[str, float | str] = {}
        for anchor in anchors:
            if anchor == codec:
                continue
            a = groups[anchor]
            try:
                v = bd_rate(
                    [p.bpp for p in a],
                    [p.psnr_db for p in a],
                    [p.bpp for p in pts],
                    [p.psnr_db for p in pts],
                )
            except CodecError as exc:
                row[anchor] = f"n/a: {exc}"
                continue
            row[anchor] = "no overlap" if v is None else round(v, 2)
        table[codec] = row
    return table


def _fmt(v: float, digits: int) -> str:
    return "-" if not math.isfinite(v) else f"{v:.{digits}f}"


def _markdown(
    points: Sequence[RatePoint],
    title: str,
    extra: dict[str, Any],
    bd: dict[str, dict[str, float | str]],
) -> str:
    lines = [f"# {title}", ""]
    for k, v in extra.items():
        lines.append(f"- {k}: {json.dumps(v) if isinstance(v, dict | list) else v}")
    any_ssim = any(p.extra.get("ms_ssim_is_ssim") for p in points)
    all_ssim = any_ssim and all(p.extra.get("ms_ssim_is_ssim") for p in points)
    q_name = "SSIM" if all_ssim else "MS-SSIM (SSIM where marked)" if any_ssim else "MS-SSIM"
    lines += [
        "",
        "## Rate points",
        "",
        f"| codec | setting | bpp | PSNR dB | {q_name} | encode fps | decode fps |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in points:
        lines.append(
            f"| {p.codec} | {p.setting} | {p.bpp:.4f} | {p.psnr_db:.2f} | {_fmt(p.ms_ssim, 4)}"
            f"{' (SSIM)' if any_ssim and not all_ssim and p.extra.get('ms_ssim_is_ssim') else ''} "
            f"| {_fmt(p.encode_fps, 1)} | {_fmt(p.decode_fps, 1)} |"
        )
    if any_ssim:
        lines += [
            "",
            "Frames are smaller than MS-SSIM's minimum (161 px on the shorter side): single-scale SSIM is shown.",
        ]
    anchors = [c for c in CLASSIC_CODECS if any(p.codec == c for p in points)]
    if anchors:
        lines += [
            "",
            "## BD-rate (PSNR), percent rate change against each anchor (negative: fewer bits)",
            "",
            "| codec | " + " | ".join(f"vs {a}" for a in anchors) + " |",
            "| --- | " + " | ".join("---" for _ in anchors) + " |",
        ]
        for codec, row in bd.items():
            cells = []
            for a in anchors:
                v = row.get(a, "")
                cells.append("" if a == codec else f"{v:+.2f}%" if isinstance(v, float) else str(v))
            lines.append(f"| {codec} | " + " | ".join(cells) + " |")
        if any(v == "no overlap" for row in bd.values() for v in row.values()):
            lines += [
                "",
                '"no overlap": the PSNR ranges do not overlap; nothing is extrapolated (see rd.png).',
            ]
    return "\n".join(lines) + "\n"


def _plot(points: Sequence[RatePoint], title: str, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for codec, pts in _by_codec(points).items():
        pts = sorted(pts, key=lambda p: p.bpp)
        ax.plot([p.bpp for p in pts], [p.psnr_db for p in pts], marker="o", label=codec)
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel (log scale)")
    ax.set_ylabel("PSNR dB (RGB, mean over frames)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if points:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def write_report(
    points: list[RatePoint], out_dir: str | os.PathLike[str], title: str, extra: dict[str, Any]
) -> None:
    """Write ``results.json``, ``results.md`` and ``rd.png`` (PSNR against bpp) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bd = bd_rate_table(points)
    doc = {
        "title": title,
        "extra": extra,
        "points": [asdict(p) for p in points],
        "bd_rate_psnr": bd,
    }
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out / "results.md").write_text(_markdown(points, title, extra, bd))
    _plot(points, title, out / "rd.png")


def run_bench(
    clip_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    max_frames: int | None,
    our_codec: Callable[[np.ndarray, Fraction], list[RatePoint]] | None,
    classic: Sequence[str] = CLASSIC_CODECS,
    *,
    extra: dict[str, Any] | None = None,
    rc_fps: Fraction = NOMINAL_RC_FPS,
    x264_sliced_threads: int = 0,
) -> dict[str, Any]:
    """Benchmark the first ``max_frames`` frames of ``clip_path``; returns what ``results.json`` holds.

    ``our_codec(frames uint8[T, H, W, 3], fps)`` returns its own rate points,
    measured with :mod:`codec.metrics` against the same frames. ``extra`` is
    added to the report's ``extra`` after ``our_codec`` has run (so it may fill
    it in). Classic codecs this PyAV build lacks are listed under
    ``extra["unavailable"]``.
    """
    info = probe(clip_path)
    frames = np.stack(list(iter_frames(clip_path, max_frames)))
    t, h, w = frames.shape[:3]
    points: list[RatePoint] = []
    unavailable: dict[str, str] = {}
    for codec in classic:
        reason = classic_codec_status(codec)
        if reason is None and (h % 2 or w % 2):
            reason = f"{PIX_FMT} needs even width and height; the clip is {w}x{h}"
        if reason is not None:
            unavailable[codec] = reason
            continue
        points += classic_codec_points(
            frames, info.fps, codec, CLASSIC_SETTINGS[codec],  # type: ignore[arg-type]
            rc_fps=rc_fps, x264_sliced_threads=x264_sliced_threads,
        )  # fmt: skip
    if our_codec is not None:
        points += our_codec(frames, info.fps)
    report_extra: dict[str, Any] = {
        "clip": os.fspath(clip_path),
        "size": f"{w}x{h}",
        "frames": t,
        "clip_fps": str(info.fps),
        "classic encoders": f"{PIX_FMT}, run at {rc_fps} fps, x264 "
        + (f"sliced threads x{x264_sliced_threads}" if x264_sliced_threads else "frame threads"),
        "unavailable": unavailable or "none",
        "pyav": av.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs visible (speeds are noisy on a shared machine)",
    }
    report_extra.update(extra or {})
    title = f"splatpack bench: {Path(clip_path).name}, {t} frames"
    write_report(points, out_dir, title, report_extra)
    return json.loads((Path(out_dir) / "results.json").read_text())


def main(argv: list[str] | None = None) -> int:
    """``python -m codec.bench CLIP --out DIR [--max-frames N]``: classic anchors only."""
    ap = argparse.ArgumentParser(
        prog="python -m codec.bench", description=__doc__.split("\n")[0] if __doc__ else None
    )
    ap.add_argument("clip")
    ap.add_argument("--out", required=True, help="output directory for results.json/md and rd.png")
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument(
        "--codecs", default=",".join(CLASSIC_CODECS), help="comma-separated classic codecs"
    )
    ap.add_argument(
        "--x264-sliced-threads", type=int, default=0, help="2 reproduces shared/data/README.md"
    )
    args = ap.parse_args(argv)
    try:
        doc = run_bench(
            args.clip, args.out, args.max_frames, None,
            classic=[c for c in args.codecs.split(",") if c],
            x264_sliced_threads=args.x264_sliced_threads,
        )  # fmt: skip
    except CodecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((Path(args.out) / "results.md").read_text())
    return 0 if doc["points"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
