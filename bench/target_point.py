"""Encode one clip to a real ``.gsv`` at one config and print whole-file bpp and PSNR.

For checking a single operating point against a target exactly as ``splatpack bench``
counts it (every byte of the file), with any ``CodecConfig`` override:

    .venv/bin/python bench/target_point.py ../shared/data/carphone_pristine.mp4 --frames 60 \\
        --gop 60 --quality 4 fit__pframe_rd_lambda=650

Writes JSON (default ``bench/results/target_point.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from codec.api import encode_video, iter_decoded  # noqa: E402
from codec.config import CodecConfig, parse_overrides  # noqa: E402
from codec.metrics import psnr_db  # noqa: E402
from codec.video import iter_frames  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clip", type=Path)
    ap.add_argument(
        "overrides", nargs="*", help="key=value CodecConfig overrides (fit__x, quant__y)"
    )
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--gop", type=int, default=60)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--quality", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("bench/results/target_point.json"))
    args = ap.parse_intermixed_args(argv)
    overrides = parse_overrides(args.overrides)
    cfg = CodecConfig.preset(args.preset, args.quality, gop=args.gop, **overrides)
    with tempfile.TemporaryDirectory() as tmp:
        gsv = Path(tmp) / "out.gsv"
        summary = encode_video(args.clip, gsv, cfg, max_frames=args.frames)
        size = gsv.stat().st_size
        decoded = list(iter_decoded(gsv))
    originals = [f for _, f in zip(range(len(decoded)), iter_frames(args.clip), strict=False)]
    psnr = sum(psnr_db(a, b) for a, b in zip(originals, decoded, strict=True)) / len(decoded)
    h, w = decoded[0].shape[:2]
    row = {
        "clip": str(args.clip),
        "config": cfg.to_compact(),
        "frames": len(decoded),
        "file_bytes": size,
        "bpp": size * 8 / (w * h * len(decoded)),
        "psnr_db": psnr,
        "encode_seconds": summary.encode_seconds,
    }
    print(
        f"{args.clip.name}: {row['bpp']:.4f} bpp (whole file, {size} B), {psnr:.2f} dB over {len(decoded)} frames"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
