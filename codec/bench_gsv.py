"""The Gaussian codec's side of ``splatpack bench``: rate points, the GaussianImage-style
baseline and the initialisation race, measured on exactly the frames the classic codecs get.

Every figure follows ``MEASURING.md``: bpp counts every byte of the ``.gsv`` file
(header, index, side information); PSNR is the mean of per-frame RGB PSNR;
decode fps times ``decode_gop`` alone (no file I/O). The decoded frames are
checked to equal the encoder's reconstruction, so a bench run is also a
bit-exactness check on real video.
"""

from __future__ import annotations

import io
import json
import math
import statistics
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codec.bench import RatePoint, run_bench
from codec.bitstream import write_varint
from codec.config import CodecConfig, PresetName
from codec.container import ContainerWriter, StreamHeader
from codec.errors import CodecError
from codec.fit import iters_to_psnr
from codec.gop import decode_gop, encode_gop_report, gaussian_count, to_float
from codec.init import random_init, superpixel_init
from codec.metrics import bd_rate, ms_ssim, psnr_db
from codec.render import get_backend


def gsv_rate_point(
    frames: np.ndarray, fps: Fraction, cfg: CodecConfig, label: str, setting: str
) -> RatePoint:
    """Encode ``frames`` (uint8 [T, H, W, 3]) into an in-memory ``.gsv`` and measure it."""
    return gsv_rate_points(frames, fps, cfg, label, setting)[0]


def gsv_rate_points(
    frames: np.ndarray, fps: Fraction, cfg: CodecConfig, label: str, setting: str
) -> list[RatePoint]:
    """As :func:`gsv_rate_point`; with ``cfg.enhance`` on, a second point ``label + "+enhance"``:
    the first is then the same file without its enhancer records (each GOP's field one empty
    byte, the raw Gaussian output; its header still notes the setting, a few bytes), the second
    the file as written, decoded with its records."""
    t_count, h, w, _ = frames.shape
    header = StreamHeader(
        width=w,
        height=h,
        fps_num=fps.numerator,
        fps_den=fps.denominator,
        gop=cfg.gop,
        codec_params=cfg.to_compact(),
    )
    buffer = io.BytesIO()
    payloads: list[bytes] = []
    recon_parts: list[np.ndarray] = []
    output_parts: list[np.ndarray] = []  # what decode_gop shows (enhanced where a record is)
    record_extra_bytes = 0  # enhancer bytes beyond an empty field, summed over the GOPs
    stats: list[dict[str, Any]] = []
    encode_seconds = 0.0
    with ContainerWriter(buffer, header) as writer:
        for gop_index, first in enumerate(range(0, t_count, cfg.gop)):
            chunk = frames[first : first + cfg.gop]
            start = time.perf_counter()
            result = encode_gop_report(chunk, cfg)
            encode_seconds += time.perf_counter() - start
            writer.add_gop(gop_index, first, len(chunk), result.payload)
            payloads.append(result.payload)
            recon_parts.append(result.recon)
            output_parts.append(result.output())
            if result.enhancer_bytes:
                field = len(write_varint(result.enhancer_bytes)) + result.enhancer_bytes
                record_extra_bytes += field - 1
            stats.extend(result.stats_dicts())
    n_bytes = len(buffer.getvalue())
    recon = np.concatenate(recon_parts)

    decode_seconds = 0.0
    for payload, expected in zip(payloads, output_parts, strict=True):
        start = time.perf_counter()
        decoded = decode_gop(payload)
        decode_seconds += time.perf_counter() - start
        if not np.array_equal(decoded, expected):
            raise AssertionError(
                f"{label} {setting}: decoder output differs from the encoder's reconstruction"
            )

    psnrs = [float(s["psnr_db"]) for s in stats]
    ssim_pairs = [ms_ssim(a, b) for a, b in zip(frames, recon, strict=True)]
    ssims = [v for v, _ in ssim_pairs]
    i_stats = [s for s in stats if s["kind"] == "I"]
    p_stats = [s for s in stats if s["kind"] == "P"]

    def mean_of(rows: list[dict[str, Any]], key: str) -> float | None:
        return float(statistics.fmean(float(r[key]) for r in rows)) if rows else None

    i_bytes, p_bytes = mean_of(i_stats, "n_bytes"), mean_of(p_stats, "n_bytes")
    plain_bytes = n_bytes - record_extra_bytes
    plain = RatePoint(
        codec=label,
        setting=setting,
        bpp=plain_bytes * 8 / (w * h * t_count),
        psnr_db=round(float(np.mean(psnrs)), 2),
        ms_ssim=float(np.mean(ssims)),
        encode_fps=t_count / encode_seconds,
        decode_fps=t_count / decode_seconds,
        extra={
            "ms_ssim_is_ssim": any(fallback for _, fallback in ssim_pairs),
            "bytes": plain_bytes,
            "gaussians": gaussian_count(cfg, h, w),
            "i_frame_bytes_mean": i_bytes,
            "p_frame_bytes_mean": p_bytes,
            "p_over_i": (p_bytes / i_bytes) if (p_bytes is not None and i_bytes) else None,
            "i_frame_seconds_mean": mean_of(i_stats, "encode_seconds"),
            "p_frame_seconds_mean": mean_of(p_stats, "encode_seconds"),
            "i_frame_iters_mean": mean_of(i_stats, "iters"),
            "p_frame_iters_mean": mean_of(p_stats, "iters"),
            "p_frame_updated_mean": mean_of(p_stats, "n_updated"),
            "decode_ms_per_frame": 1000 * decode_seconds / t_count,
        },
    )
    if cfg.enhance == "off":
        return [plain]
    output = np.concatenate(output_parts)
    out_pairs = [ms_ssim(a, b) for a, b in zip(frames, output, strict=True)]
    enhanced = RatePoint(
        codec=f"{label}+enhance",
        setting=setting,
        bpp=n_bytes * 8 / (w * h * t_count),
        psnr_db=round(
            float(np.mean([psnr_db(a, b) for a, b in zip(frames, output, strict=True)])), 2
        ),
        ms_ssim=float(np.mean([v for v, _ in out_pairs])),
        encode_fps=t_count / encode_seconds,
        decode_fps=t_count / decode_seconds,
        extra={
            "ms_ssim_is_ssim": any(fallback for _, fallback in out_pairs),
            "bytes": n_bytes,
            "enhancer_bytes": record_extra_bytes,
            "enhance": cfg.enhance,
        },
    )
    return [plain, enhanced]


def _ssim_db(p: RatePoint) -> float:
    """MS-SSIM (SSIM) in dB, ``-10 log10(1 - x)``: a scale on which BD-rate fits behave."""
    return -10.0 * math.log10(max(1.0 - p.ms_ssim, 1e-10))


def init_race(frame: np.ndarray, cfg: CodecConfig, max_iters: int = 20_000) -> dict[str, Any]:
    """Iterations to 30 dB from superpixel vs random initialisation, same frame, same Gaussian count."""
    h, w, _ = frame.shape
    n = gaussian_count(cfg, h, w)
    image = to_float(frame)
    backend = get_backend(cfg.backend)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    sp_init = superpixel_init(image, n, generator=gen)
    sp_init_seconds = time.perf_counter() - start
    start = time.perf_counter()
    sp_iters = iters_to_psnr(image, sp_init, cfg.fit, backend, target_db=30.0, max_iters=max_iters)
    sp_seconds = time.perf_counter() - start
    rnd_init = random_init(h, w, n, generator=torch.Generator().manual_seed(cfg.seed))
    start = time.perf_counter()
    rnd_iters = iters_to_psnr(
        image, rnd_init, cfg.fit, backend, target_db=30.0, max_iters=max_iters
    )
    rnd_seconds = time.perf_counter() - start
    return {
        "gaussians": n,
        "superpixel_iters_to_30db": sp_iters,
        "random_iters_to_30db": rnd_iters,
        "max_iters": max_iters,
        "superpixel_init_seconds": sp_init_seconds,
        "superpixel_fit_seconds": sp_seconds,
        "random_fit_seconds": rnd_seconds,
        "ratio_random_over_superpixel": (rnd_iters / sp_iters)
        if (sp_iters and rnd_iters)
        else None,
    }


def run_full_bench(
    clip: Path,
    out_dir: Path | None,
    *,
    max_frames: int = 60,
    preset: PresetName = "fast",
    qualities: list[int] | None = None,
    gop: int = 30,
    classic: bool = True,
    baseline: bool = True,
    iframe_iters: int | None = None,
    enhance: bool = False,
) -> dict[str, Any]:
    """Everything ``splatpack bench CLIP`` reports, written to ``out_dir`` (json, md, png).
    With ``enhance`` each level is encoded once with the per-GOP filter (``enhance="filter"``)
    and gives two curves, ``splatpack`` (the same files without the records) and
    ``splatpack+enhance``; ``extra["enhance_bd_rate"]`` is the second against the first."""
    qualities = qualities or [2, 4, 6, 8]
    out_dir = out_dir or Path("bench/results") / clip.stem
    overrides: dict[str, Any] = {"gop": gop}
    if iframe_iters is not None:
        overrides["fit__iframe_iters"] = iframe_iters
    extra: dict[str, Any] = {"preset": preset, "qualities": qualities, "gop": gop}

    def ours(frames: np.ndarray, fps: Fraction) -> list[RatePoint]:
        points = []
        for q in qualities:
            cfg = CodecConfig.preset(
                preset, q, **overrides, **({"enhance": "filter"} if enhance else {})
            )
            for point in gsv_rate_points(frames, fps, cfg, "splatpack", f"q{q}"):
                points.append(point)
                print(
                    f"  {point.codec} q{q}: {point.bpp:.4f} bpp, {point.psnr_db:.2f} dB",
                    flush=True,
                )
        if enhance:
            plain = [p for p in points if p.codec == "splatpack"]
            enh = [p for p in points if p.codec == "splatpack+enhance"]
            table: dict[str, float | str | None] = {}
            for name, get in (("psnr_db", lambda p: p.psnr_db), ("ms_ssim_db", _ssim_db)):
                try:
                    table[name] = bd_rate(
                        [p.bpp for p in plain],
                        [get(p) for p in plain],
                        [p.bpp for p in enh],
                        [get(p) for p in enh],
                    )
                except CodecError as exc:
                    table[name] = f"n/a: {exc}"
            extra["enhance_bd_rate"] = table
            print(f"  splatpack+enhance against splatpack, BD-rate %: {table}", flush=True)
        if baseline:
            for q in qualities:
                cfg = CodecConfig.preset(
                    preset, q, **{**overrides, "gop": 1, "fit__init": "random"}
                )
                points.append(gsv_rate_point(frames, fps, cfg, "gaussianimage-baseline", f"q{q}"))
                print(
                    f"  baseline q{q}: {points[-1].bpp:.4f} bpp, {points[-1].psnr_db:.2f} dB",
                    flush=True,
                )
        default_cfg = CodecConfig.preset(preset, 5, **overrides)
        extra["init_race"] = init_race(frames[0], default_cfg)
        print(f"  init race: {json.dumps(extra['init_race'])}", flush=True)
        return points

    codecs = ("x264", "x265", "svtav1") if classic else ()
    return run_bench(clip, out_dir, max_frames, ours, classic=codecs, extra=extra)
