"""Would a per-GOP least-squares post-filter pay on the development clips, every coefficient bit
counted? (issue 9: the one content-adaptive lever bench/enhance_headroom.py found)

Per clip segment and quality level: one `fast` GOP; then, on that GOP's own decoded and source
frames, the codec's least-squares filter (codec.enhance.gopfilter: 3x3 or 5x5 taps over the
output's channel, or 5x5 over all three channels, plus an offset), quantised around the identity
at each of its steps, the integer levels costed as signed Exp-Golomb codes (an upper bound for
the record's range coder). Every candidate is applied (the codec ranks them by predicted error). The
encoder's rule picks among "no filter" and every (shape, step) the least ``SSE + lambda * bits``
with the level's own P-frame lambda (SSE in 8-bit levels^2, bits = coefficients + a 1-byte
header). Prints per level the plain and filtered rate and PSNR, and the BD-rate (PSNR) of the
filtered curve against the plain one; writes JSON. Nothing is tuned on the clips: the shapes and
steps were fixed on package images (bench/enhance_headroom.py) before this ran.

    OMP_NUM_THREADS=1 .venv/bin/python bench/enhance_gop_filter.py ../shared/data/carphone_pristine.mp4 \\
        --frames 30 --levels 3,5,7,9 --out bench/results/enhance_gop_filter_carphone.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ladder_sweep import load_segment  # noqa: E402

from codec.config import CodecConfig  # noqa: E402
from codec.enhance import gopfilter  # noqa: E402
from codec.enhance.adapt import sse  # noqa: E402
from codec.gop import encode_gop_report  # noqa: E402
from codec.metrics import bd_rate, psnr_db  # noqa: E402


def _eg_bits(levels: np.ndarray) -> float:
    """Bits of signed Exp-Golomb codes (order 0) of int levels."""
    u = np.where(levels > 0, 2 * levels - 1, -2 * levels).astype(np.int64)  # zigzag
    return float(np.sum(2 * np.floor(np.log2(u + 1)) + 1))


def _mean_psnr(src: np.ndarray, out: np.ndarray) -> float:
    return float(np.mean([psnr_db(a, b) for a, b in zip(src, out, strict=True)]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("clip", type=Path)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--crop", default=None, help="centred crop WxH")
    p.add_argument("--levels", default="3,5,7,9")
    p.add_argument("--out", type=Path, default=Path("bench/results/enhance_gop_filter.json"))
    args = p.parse_args(argv)
    frames = load_segment(args.clip, args.start, args.frames, args.crop)
    t, h, w, _ = frames.shape
    px = t * h * w
    rows: list[dict[str, Any]] = []
    for q in (int(v) for v in args.levels.split(",")):
        cfg = CodecConfig.preset("fast", q, gop=t, seed=0)
        lam = cfg.fit.pframe_rd_lambda
        res = encode_gop_report(frames, cfg)
        recon = res.recon
        sse0 = sse(recon, frames)
        best: tuple[float, str, float, np.ndarray] = (sse0, "none", 0.0, recon)
        fitted = gopfilter.Fit(recon, frames)
        for shape, (k, cross) in enumerate(gopfilter.SHAPES):
            raw = fitted.coefs(shape)
            for sb in gopfilter.STEP_BITS:
                lv = gopfilter.quantise(raw, shape, sb)
                out = gopfilter.apply(recon, gopfilter.dequantise(lv, shape, sb), shape)
                d = sse(out, frames)
                bits = 8.0 + _eg_bits(lv)
                if d + lam * bits < best[0] + lam * best[2]:
                    best = (d, f"{k}x{k}{'x3' if cross else ''}/2^{sb}", bits, out)
        _, kind, bits, out = best
        row = {
            "q": q,
            "lambda": lam,
            "plain_bpp": 8 * len(res.payload) / px,
            "plain_psnr_db": _mean_psnr(frames, recon),
            "filter": kind,
            "filter_bytes": bits / 8,
            "filtered_bpp": (8 * len(res.payload) + bits) / px,
            "filtered_psnr_db": _mean_psnr(frames, out),
        }
        rows.append(row)
        print(
            f"q{q}: plain {row['plain_bpp']:.4f} bpp {row['plain_psnr_db']:.2f} dB;"
            f" filter {kind} ({row['filter_bytes']:.0f} B) -> {row['filtered_bpp']:.4f} bpp"
            f" {row['filtered_psnr_db']:.2f} dB",
            flush=True,
        )
    bd = bd_rate(
        [r["plain_bpp"] for r in rows],
        [r["plain_psnr_db"] for r in rows],
        [r["filtered_bpp"] for r in rows],
        [r["filtered_psnr_db"] for r in rows],
    )
    print(f"{args.clip.name}: BD-rate (PSNR) of plain + per-GOP filter against plain: {bd:+.2f}%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": " ".join(["python", *sys.argv]),
        "frames": t,
        "size": f"{w}x{h}",
        "rows": rows,
        "bd_rate_pct": bd,
    }
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
