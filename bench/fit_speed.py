"""Encode speed against rate-distortion for fitting changes, on several clips, in ONE run.

Each spec encodes the first frames of every clip as one GOP (``codec.gop.encode_gop_report``,
one process, the thread count the caller set) and the script prints, per clip and spec:
payload bpp, mean PSNR, encode wall and CPU seconds, CPU seconds per I-frame and per P-frame,
iterations per I-frame and per P-frame, and the ratios of rate, seconds and iterations
against the FIRST spec (the baseline, measured in the same run so that machine load affects
both alike; CPU seconds are the robust speed figure on a shared machine).

    OMP_NUM_THREADS=1 .venv/bin/python bench/fit_speed.py \\
        --clip ../shared/data/carphone_pristine.mp4:20 --clip ../shared/data/box.mp4:10 \\
        "q=4" "q=4,fit__iframe_stop_db_per_iter=0.004" "preset=ultrafast,q=4"

A spec is comma-separated key=value: ``q`` is the quality, ``preset`` the preset name (default
``--preset``), ``src`` a directory holding another version of the ``codec`` package to run (for
the unchanged baseline: ``git archive 20eb71a codec | tar -x -C /tmp/base``, then
``src=/tmp/base``), every other key a CodecConfig override (``fit__x``, ``quant__y``, top-level).
Every encode runs in its own child process (``--one``), so versions do not mix.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

import codec.gop as codec_gop
from codec.config import CodecConfig, parse_overrides
from codec.gop import GopEncodeResult, encode_gop_report
from codec.video import iter_frames


def _clip_arg(text: str) -> tuple[Path, int, int]:
    """``PATH[:FRAMES[:START]]`` -> (path, frames, first frame)."""
    parts = text.split(":")
    numbers: list[int] = []
    while len(parts) > 1 and parts[-1].isdigit() and len(numbers) < 2:
        numbers.insert(0, int(parts.pop()))
    n_frames, start = (numbers + [10, 0][len(numbers) :])[:2] if numbers else (10, 0)
    return Path(":".join(parts)), n_frames, start


def _read(clip: Path, n_frames: int, start: int) -> np.ndarray:
    frames = [f for _, f in zip(range(start + n_frames), iter_frames(clip), strict=False)]
    return np.stack(frames[start:])


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarise(result: GopEncodeResult, n_pixels: int, seconds: float) -> dict[str, Any]:
    """The figures of one encode: rate, quality, time and iterations, split by frame kind."""
    i_frames = [f for f in result.frames if f.kind == "I"]
    p_frames = [f for f in result.frames if f.kind == "P"]
    return {
        "bpp_payload": len(result.payload) * 8 / n_pixels,
        "psnr_db": float(np.mean([f.psnr_db for f in result.frames])),
        "seconds": seconds,
        "i_frames": len(i_frames),
        "i_seconds_mean": _mean([f.encode_seconds for f in i_frames]),
        "p_seconds_mean": _mean([f.encode_seconds for f in p_frames]),
        "i_iters_mean": _mean([float(f.iters) for f in i_frames]),
        "p_iters_mean": _mean([float(f.iters) for f in p_frames]),
        "p_updates_mean": _mean([float(f.n_updated) for f in p_frames]),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def run_one(clip: Path, n_frames: int, start: int, spec: str, preset: str) -> dict[str, Any]:
    """Encode one clip under one spec in this process; the figures as a dict."""
    frames = _read(clip, n_frames, start)
    overrides = parse_overrides(spec.split(","))
    overrides.pop("src", None)
    quality = int(overrides.pop("q", 5))
    preset = str(overrides.pop("preset", preset))
    cfg = CodecConfig.preset(preset, quality, gop=len(frames), **overrides)  # type: ignore[arg-type]
    # per-frame seconds in CPU time (the machine is shared: wall time depends on the neighbours),
    # for any codec version: codec.gop times its frames with time.perf_counter
    codec_gop.time = SimpleNamespace(perf_counter=time.process_time, process_time=time.process_time)  # type: ignore[assignment]
    t0, cpu0 = time.perf_counter(), time.process_time()
    result = encode_gop_report(frames, cfg)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    row = summarise(result, frames[..., 0].size, seconds)
    where = str(Path(codec_gop.__file__).parent)
    return {"spec": spec, "codec": where, "frames": len(frames), **row, "cpu_seconds": cpu}


def _child(clip: Path, n_frames: int, start: int, spec: str, preset: str) -> dict[str, Any]:
    src = parse_overrides(spec.split(",")).get("src")
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = f"{src}{os.pathsep}{env.get('PYTHONPATH', '')}"
    cmd = [sys.executable, __file__, "--one", f"{clip}:{n_frames}:{start}", "--preset", preset]
    cmd.append(spec)
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("specs", nargs="+")
    parser.add_argument(
        "--one", help="internal: encode this PATH:FRAMES under the one spec, print JSON"
    )
    parser.add_argument("--clip", action="append", default=[], help="PATH[:FRAMES[:START]]")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--out", type=Path, default=Path("bench/results/fit_speed.json"))
    args = parser.parse_args(argv)
    if args.one:
        clip, n_frames, first = _clip_arg(args.one)
        print(json.dumps(run_one(clip, n_frames, first, args.specs[0], args.preset)))
        return 0
    report: dict[str, Any] = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "torch_threads": torch.get_num_threads(),
        "clips": [],
    }
    for clip_text in args.clip:
        clip, n_frames, first = _clip_arg(clip_text)
        rows: list[dict[str, Any]] = []
        for spec in args.specs:
            row = _child(clip, n_frames, first, spec, args.preset)
            base = rows[0] if rows else row
            for key in (
                "bpp_payload",
                "seconds",
                "cpu_seconds",
                "i_seconds_mean",
                "p_seconds_mean",
                "i_iters_mean",
                "p_iters_mean",
            ):
                row[f"{key}_ratio"] = _ratio(row[key], base[key])
            row["psnr_delta_db"] = row["psnr_db"] - base["psnr_db"]
            rows.append(row)
            print(
                f"{clip.name}[{row['frames']}] {spec}: {row['bpp_payload']:.4f} bpp "
                f"(x{row['bpp_payload_ratio']:.3f}), {row['psnr_db']:.2f} dB ({row['psnr_delta_db']:+.2f}), "
                f"{row['seconds']:.0f} s (x{row['seconds_ratio']:.2f}), "
                f"CPU {row['cpu_seconds']:.0f} s (x{row['cpu_seconds_ratio'] or math.nan:.2f}); "
                f"I {row['i_seconds_mean'] or math.nan:.1f} s / {row['i_iters_mean'] or 0:.0f} it, "
                f"P {row['p_seconds_mean'] or math.nan:.2f} s / {row['p_iters_mean'] or 0:.1f} it (CPU)",
                flush=True,
            )
        report["clips"].append(
            {"clip": str(clip), "frames": n_frames, "first_frame": first, "rows": rows}
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
