"""Where a GOP's P-frame bits go: histogram level tables (side information), stream headers, data.

Encodes the first frames of a clip as one GOP and counts, for every symbol stream the
P-frames write (``codec.entropy._write_plan``), the bits of its header (predictor and mode),
of its level table and of its data, against the P-frames' total bytes. ``--no-reuse``
empties the model memory before every lookup, so no stream can reuse the histogram it
sent in an earlier P-frame (GOP format 5, mode 17): the encoding before that change.

    OMP_NUM_THREADS=1 .venv/bin/python bench/pframe_side_info.py ../shared/data/carphone_pristine.mp4 --frames 30 --quality 4
    OMP_NUM_THREADS=1 .venv/bin/python bench/pframe_side_info.py ../shared/data/carphone_pristine.mp4 --frames 30 --quality 4 --no-reuse
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import codec.entropy as entropy  # noqa: E402
import codec.gop as gop  # noqa: E402
from codec.config import CodecConfig  # noqa: E402
from codec.video import iter_frames  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip", type=Path)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--quality", type=int, default=4)
    parser.add_argument("--no-reuse", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results/pframe_side_info.json"))
    args = parser.parse_args(argv)

    counts = {"head": 0.0, "tables": 0.0, "data": 0.0}
    in_pframe = False
    write_plan = entropy._write_plan
    encode_inter = entropy.encode_inter

    def counting_write_plan(w: Any, p: Any, kbits: int, n_cands: int, memo: Any = None) -> None:
        if in_pframe:
            head = math.log2(entropy._N_MODES) + (math.log2(n_cands) if n_cands > 1 else 0.0)
            table = 0.0
            if p.levels is not None and p.mode != entropy._MODE_REUSE:
                table = float(entropy._LEVEL_SYM_BITS[entropy._level_symbols(p.levels)].sum())
            counts["head"] += head
            counts["tables"] += table
            counts["data"] += p.cost - head - table
        write_plan(w, p, kbits, n_cands, memo)

    def counting_encode_inter(*a: Any, **k: Any) -> bytes:
        nonlocal in_pframe
        in_pframe = True
        try:
            return encode_inter(*a, **k)
        finally:
            in_pframe = False

    entropy._write_plan = counting_write_plan  # type: ignore[assignment]
    gop.encode_inter = counting_encode_inter  # type: ignore[assignment]
    if args.no_reuse:
        entropy.ModelMemory.get = lambda self, key, kbits: None  # type: ignore[method-assign]

    frames = np.stack([f for _, f in zip(range(args.frames), iter_frames(args.clip), strict=False)])
    cfg = CodecConfig.preset("fast", args.quality, gop=len(frames))
    result = gop.encode_gop_report(frames, cfg)
    p_bits = 8 * sum(f.n_bytes for f in result.frames if f.kind == "P")
    row = {
        "command": shlex.join(["bench/pframe_side_info.py", *(argv or sys.argv[1:])]),
        "clip": str(args.clip),
        "frames": len(frames),
        "quality": args.quality,
        "model_reuse": not args.no_reuse,
        "p_frame_bits": p_bits,
        **{f"{k}_bits": round(v) for k, v in counts.items()},
        "psnr_db": float(np.mean([f.psnr_db for f in result.frames])),
    }
    print(
        f"{args.clip.name} q{args.quality}, {len(frames)} frames, model reuse "
        f"{'off' if args.no_reuse else 'on'}: P-frame bits {p_bits}: level tables "
        f"{counts['tables']:.0f} ({counts['tables'] / p_bits:.1%}), stream headers "
        f"{counts['head']:.0f} ({counts['head'] / p_bits:.1%}), stream data "
        f"{counts['data']:.0f} ({counts['data'] / p_bits:.1%}); mean PSNR {row['psnr_db']:.2f} dB"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
    runs = [r for r in runs if r["model_reuse"] != row["model_reuse"]] + [row]
    args.out.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
