"""Encode the first frames of a clip as ONE GOP under several config overrides and compare.

A quick A/B tool for encoder changes: prints bpp of the GOP payload (container
header and index excluded, so it is slightly below `splatpack bench`'s whole-file
bpp), mean PSNR, I- and P-frame sizes and how many Gaussians P-frames update.

    .venv/bin/python bench/gop_sweep.py ../shared/data/carphone_pristine.mp4 --frames 12 \\
        "q=4" "q=4,quant__xy_bits=10,quant__xy_step_px=0"
Each spec is comma-separated key=value: `q` is the quality, every other key is a
CodecConfig override (`fit__x`, `quant__y`, or a top-level field).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from codec.config import CodecConfig, parse_overrides
from codec.gop import encode_gop_report
from codec.video import iter_frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip", type=Path)
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gop_sweep.json"))
    args = parser.parse_args(argv)
    frames = np.stack([f for _, f in zip(range(args.frames), iter_frames(args.clip), strict=False)])
    rows = []
    for spec in args.specs:
        overrides = parse_overrides(spec.split(","))
        quality = int(overrides.pop("q", 5))
        cfg = CodecConfig.preset(args.preset, quality, gop=len(frames), **overrides)
        start = time.perf_counter()
        result = encode_gop_report(frames, cfg)
        seconds = time.perf_counter() - start
        p_frames = [f for f in result.frames if f.kind == "P"]
        i_bytes = float(np.mean([f.n_bytes for f in result.frames if f.kind == "I"]))
        p_bytes = float(np.mean([f.n_bytes for f in p_frames])) if p_frames else None
        row = {
            "spec": spec,
            "bpp_payload": len(result.payload) * 8 / frames[..., 0].size,
            "psnr_db": float(np.mean([f.psnr_db for f in result.frames])),
            "i_frame_bytes_mean": i_bytes,
            "p_frame_bytes_mean": p_bytes,
            "p_over_i": p_bytes / i_bytes if p_bytes is not None else None,
            "p_updates_mean": float(np.mean([f.n_updated for f in p_frames])) if p_frames else None,
            "gaussians": result.frames[0].n_gaussians,
            "seconds": seconds,
        }
        rows.append(row)
        print(
            f"{spec}: {row['bpp_payload']:.4f} bpp, {row['psnr_db']:.2f} dB, I {i_bytes:.0f} B, "
            f"P {p_bytes or 0:.0f} B (P/I {row['p_over_i'] or 0:.2f}), updates {row['p_updates_mean'] or 0:.0f}"
            f"/{row['gaussians']}, {seconds:.0f} s",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"clip": str(args.clip), "frames": len(frames), "rows": rows}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
