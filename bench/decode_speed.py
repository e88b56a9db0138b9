"""CPU decode speed of ``decode_gop`` at a given quality (MEASURING.md: no file I/O).

Encodes the first ``--frames`` frames of a clip as one GOP (the I-frame fit is
shortened with ``--iters``: decode cost depends on the Gaussian count and sizes,
not on how long the encoder polished them), then times ``decode_gop`` at each
thread count and prints and saves the median ms per frame.

    .venv/bin/python bench/decode_speed.py ../shared/data/Megamind.avi --quality 5 --start 150

The same payload is also decoded with its render flag cleared, i.e. through the legacy
PyTorch tile renderer that every decoder before issue 8 used, for a ratio in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codec.bitstream import GopHeader, pack_gop, unpack_gop
from codec.config import CodecConfig
from codec.gop import decode_gop, encode_gop_report
from codec.video import iter_frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip", type=Path)
    parser.add_argument("--quality", type=int, default=5)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--start", type=int, default=0, help="first frame (Megamind opens black)")
    parser.add_argument("--iters", type=int, default=150, help="I-frame iterations for the encode")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--out", type=Path, default=Path("bench/results/decode_speed.json"))
    args = parser.parse_args(argv)

    clip = iter_frames(args.clip, max_frames=args.start + args.frames)
    frames = np.stack([f for i, f in enumerate(clip) if i >= args.start])
    cfg = CodecConfig.preset(
        "fast", args.quality, gop=args.frames, fit__iframe_iters=args.iters, fit__pframe_iters=20
    )
    result = encode_gop_report(frames, cfg)
    header, coded = unpack_gop(result.payload)
    # the same Gaussians through the decoder's legacy path (flag clear: PyTorch tile renderer
    # and to_u8, exactly what 20eb71a's decoder ran), for a ratio measured in one process
    legacy = pack_gop(
        GopHeader(header.height, header.width, header.n_frames, header.grid, 0), coded
    )
    t_count, height, width, _ = frames.shape
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        row: dict[str, Any] = {"threads": threads}
        for name, payload in (("canonical", result.payload), ("legacy", legacy)):
            decode_gop(payload)  # warm-up
            per_frame_ms, cpu_ms = [], []
            for _ in range(args.repeats):
                start, cpu0 = time.perf_counter(), time.process_time()
                decoded = decode_gop(payload)
                per_frame_ms.append(1000 * (time.perf_counter() - start) / t_count)
                cpu_ms.append(1000 * (time.process_time() - cpu0) / t_count)
            if name == "canonical":
                assert np.array_equal(decoded, result.recon), (
                    "decoder output differs from the encoder's reconstruction"
                )
            row[name] = {
                "ms_per_frame_median": statistics.median(per_frame_ms),
                "cpu_ms_per_frame_median": statistics.median(cpu_ms),
                "ms_per_frame_all": per_frame_ms,
            }
        rows.append(row)
        can, leg = row["canonical"], row["legacy"]
        print(
            f"{args.clip.name} {width}x{height} q{args.quality} "
            f"({result.frames[0].n_gaussians} Gaussians): {threads} thread(s): "
            f"{can['ms_per_frame_median']:.1f} ms/frame wall, {can['cpu_ms_per_frame_median']:.1f} "
            f"CPU (legacy renderer: {leg['ms_per_frame_median']:.1f} wall, "
            f"{leg['cpu_ms_per_frame_median']:.1f} CPU; medians of {args.repeats})"
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
