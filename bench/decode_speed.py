"""CPU decode speed of ``decode_gop`` at a given quality (MEASURING.md: no file I/O).

Encodes the first ``--frames`` frames of a clip as one GOP (the I-frame fit is
shortened with ``--iters``: decode cost depends on the Gaussian count and sizes,
not on how long the encoder polished them), then times ``decode_gop`` at each
thread count and prints and saves the median ms per frame.

    .venv/bin/python bench/decode_speed.py ../shared/data/Megamind.avi --quality 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from codec.config import CodecConfig
from codec.gop import decode_gop, encode_gop_report
from codec.video import iter_frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip", type=Path)
    parser.add_argument("--quality", type=int, default=5)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--iters", type=int, default=150, help="I-frame iterations for the encode")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--out", type=Path, default=Path("bench/results/decode_speed.json"))
    args = parser.parse_args(argv)

    frames = np.stack([f for _, f in zip(range(args.frames), iter_frames(args.clip), strict=False)])
    cfg = CodecConfig.preset(
        "fast", args.quality, gop=args.frames, fit__iframe_iters=args.iters, fit__pframe_iters=20
    )
    result = encode_gop_report(frames, cfg)
    t_count, height, width, _ = frames.shape
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        decode_gop(result.payload)  # warm-up
        per_frame_ms = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            decoded = decode_gop(result.payload)
            per_frame_ms.append(1000 * (time.perf_counter() - start) / t_count)
        assert np.array_equal(decoded, result.recon), (
            "decoder output differs from the encoder's reconstruction"
        )
        rows.append(
            {
                "threads": threads,
                "ms_per_frame_median": statistics.median(per_frame_ms),
                "ms_per_frame_all": per_frame_ms,
            }
        )
        print(
            f"{args.clip.name} {width}x{height} q{args.quality} ({result.frames[0].n_gaussians} Gaussians): "
            f"{threads} thread(s): {rows[-1]['ms_per_frame_median']:.1f} ms/frame (median of {args.repeats})"
        )
    report = {
        "clip": str(args.clip),
        "size": [width, height],
        "quality": args.quality,
        "gaussians": result.frames[0].n_gaussians,
        "frames": t_count,
        "payload_bytes": len(result.payload),
        "load_average": os.getloadavg(),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
