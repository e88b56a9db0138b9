"""The quality ladder on a clip segment: per-level rate and PSNR, per-level gains, BD-rate vs x264.

The tuning tool of issue 14 (items 1-3): encodes ``--frames`` frames from ``--start`` of a
clip (optionally a centred ``--crop WxH``, so tuning on 640x480 clips stays affordable on a
shared CPU) as ONE GOP at each quality level in ``--levels``, under each spec, and prints

- per level: bpp of the GOP payload (container header and index excluded, a few bytes),
  mean RGB PSNR (MEASURING.md), I-frame Gaussians, seconds;
- the gain of each level over the previous one (dB) and its rate ratio;
- the BD-rate (PSNR) against x264 (preset medium, CRF ``--crfs``) on exactly these frames.

    OMP_NUM_THREADS=1 .venv/bin/python bench/ladder_sweep.py ../shared/data/box.mp4 \\
        --start 0 --frames 6 --crop 320x240 --levels 1,3,5,7,9 "base" "fit__budget=density"

A spec is a name optionally followed by ``:`` and comma-separated CodecConfig overrides
(``fit__x=..``, ``quant__y=..``); ``base`` alone is the preset as it is. Results go to
``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from codec.bench import classic_codec_points
from codec.config import CodecConfig, parse_overrides
from codec.errors import CodecError
from codec.gop import encode_gop_report
from codec.metrics import bd_rate
from codec.video import iter_frames


def load_segment(clip: Path, start: int, count: int, crop: str | None) -> np.ndarray:
    """uint8 [T, H, W, 3]: ``count`` frames from ``start``, centre-cropped to ``crop`` ("WxH")."""
    frames = [
        f for i, f in zip(range(start + count), iter_frames(clip), strict=False) if i >= start
    ]
    seg = np.stack(frames)
    if crop:
        cw, ch = (int(v) for v in crop.lower().split("x"))
        _, h, w, _ = seg.shape
        y0, x0 = max(0, (h - ch) // 2), max(0, (w - cw) // 2)
        seg = np.ascontiguousarray(seg[:, y0 : y0 + ch, x0 : x0 + cw])
    return seg


def ladder(
    frames: np.ndarray, preset: str, levels: list[int], overrides: dict[str, Any]
) -> list[dict[str, Any]]:
    """One GOP per level; rows of level, bpp, psnr_db, gaussians, seconds."""
    t, h, w, _ = frames.shape
    rows = []
    for q in levels:
        cfg = CodecConfig.preset(preset, q, gop=t, **overrides)  # type: ignore[arg-type]
        start = time.perf_counter()
        res = encode_gop_report(frames, cfg)
        rows.append(
            {
                "q": q,
                "bpp": len(res.payload) * 8 / (t * h * w),
                "psnr_db": float(np.mean([f.psnr_db for f in res.frames])),
                "i_gaussians": res.frames[0].n_gaussians,
                "i_bytes": res.frames[0].n_bytes,
                "seconds": time.perf_counter() - start,
                "psnr_db_per_frame": [round(f.psnr_db, 2) for f in res.frames],
                "bytes_per_frame": [f.n_bytes for f in res.frames],
            }
        )
        r = rows[-1]
        print(
            f"    q{q}: {r['bpp']:.4f} bpp {r['psnr_db']:.2f} dB N={r['i_gaussians']} "
            f"I={r['i_bytes']} B {r['seconds']:.0f} s",
            flush=True,
        )
    return rows


def summary(rows: list[dict[str, Any]], x264: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-level gains and the BD-rate against the x264 points."""
    gains = [round(b["psnr_db"] - a["psnr_db"], 2) for a, b in zip(rows, rows[1:], strict=False)]
    ratios = [round(b["bpp"] / a["bpp"], 2) for a, b in zip(rows, rows[1:], strict=False)]
    try:
        bd = bd_rate(
            [p["bpp"] for p in x264],
            [p["psnr_db"] for p in x264],
            [r["bpp"] for r in rows],
            [r["psnr_db"] for r in rows],
        )
    except CodecError as exc:
        bd = None
        print(f"    BD-rate n/a: {exc}")
    return {"gains_db": gains, "rate_ratios": ratios, "bd_rate_vs_x264": bd}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clip", type=Path)
    ap.add_argument("specs", nargs="+")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--crop", default=None, help="centred crop WxH")
    ap.add_argument("--levels", default="1,2,3,4,5,6,7,8,9,10")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--crfs", default="18,23,28,33,38,43")
    ap.add_argument("--out", type=Path, default=Path("bench/results/ladder_sweep.json"))
    args = ap.parse_args(argv)
    frames = load_segment(args.clip, args.start, args.frames, args.crop)
    t, h, w, _ = frames.shape
    print(f"{args.clip.name}: frames {args.start}..{args.start + t - 1}, {w}x{h}", flush=True)
    x264 = [
        {"crf": p.setting, "bpp": p.bpp, "psnr_db": p.psnr_db}
        for p in classic_codec_points(
            frames, Fraction(25), "x264", [int(c) for c in args.crfs.split(",")]
        )
    ]
    print("  x264: " + ", ".join(f"crf{p['crf']} {p['bpp']:.4f}/{p['psnr_db']:.2f}" for p in x264))
    levels = [int(v) for v in args.levels.split(",")]
    doc: dict[str, Any] = {
        "clip": str(args.clip),
        "start": args.start,
        "frames": t,
        "size": f"{w}x{h}",
        "preset": args.preset,
        "x264": x264,
        "specs": {},
    }
    for spec in args.specs:
        name, _, rest = spec.partition(":")
        overrides = parse_overrides([s for s in rest.split(",") if s]) if rest else {}
        print(f"  {name} {overrides}", flush=True)
        rows = ladder(frames, args.preset, levels, overrides)
        s = summary(rows, x264)
        print(
            f"  {name}: gains {s['gains_db']}, rate x{s['rate_ratios']}, "
            f"BD-rate vs x264 {s['bd_rate_vs_x264'] if s['bd_rate_vs_x264'] is None else round(s['bd_rate_vs_x264'], 1)}%",
            flush=True,
        )
        doc["specs"][spec] = {"rows": rows, **s}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
