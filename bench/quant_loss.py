"""What quantisation costs an I-frame, channel by channel, and what geometric diagonals save.

Fits frame 0 of a clip once (fast preset, float), then renders it with one attribute group
quantised at a time (positions, Cholesky, colours) and with all of them, at several bit
depths, on the codec's own grid (geometric Cholesky diagonals) and on a uniform grid for
the diagonals (the GOP format 1 quantiser, rebuilt here for the comparison).

    .venv/bin/python bench/quant_loss.py ../shared/data/carphone_pristine.mp4 --quality 4

Prints a table and writes JSON (default ``bench/results/quant_loss.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from codec.config import CodecConfig  # noqa: E402
from codec.fit import fit_iframe  # noqa: E402
from codec.gaussians import MIN_CHOL_DIAG, Gaussians  # noqa: E402
from codec.gop import _initialise, gaussian_count, to_float, to_u8  # noqa: E402
from codec.metrics import psnr_db  # noqa: E402
from codec.quant import dequantize, make_grid, quantize  # noqa: E402
from codec.render import get_backend  # noqa: E402
from codec.video import iter_frames  # noqa: E402


def _uniform_diagonals(g: Gaussians, bits: int, quantile: float) -> Tensor:
    """chol [N, 3] with l11, l22 on a uniform grid over their robust range (format 1)."""
    chol = g.chol.clone()
    for c in (0, 2):
        v = g.chol[:, c].double()
        lo, hi = (
            float(x) for x in torch.quantile(v, torch.tensor([quantile, 1 - quantile]).double())
        )
        lo = max(lo, MIN_CHOL_DIAG)
        step = max(hi - lo, 1e-3) / (2**bits - 1)
        chol[:, c] = (lo + ((v - lo) / step).round().clamp(0, 2**bits - 1) * step).float()
    return chol


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clip", type=Path)
    ap.add_argument("--quality", type=int, default=4)
    ap.add_argument("--bits", default="5,6,7")
    ap.add_argument("--out", type=Path, default=Path("bench/results/quant_loss.json"))
    args = ap.parse_args(argv)
    frame_u8 = next(iter(iter_frames(args.clip)))
    frame = to_float(frame_u8)
    h, w, _ = frame.shape
    cfg = CodecConfig.preset("fast", args.quality)
    gen = torch.Generator().manual_seed(cfg.seed)
    init = _initialise(frame, gaussian_count(cfg, h, w), cfg, None, gen)
    g = fit_iframe(frame, init, cfg.fit, get_backend(cfg.backend), generator=gen).gaussians.detach()
    renderer = get_backend("torch")

    def psnr(x: Gaussians) -> float:
        return round(psnr_db(frame_u8, to_u8(renderer.render_nograd(x, h, w))), 2)

    rows: list[dict[str, Any]] = []
    print(f"{args.clip.name} frame 0, {len(g)} Gaussians, float fit {psnr(g):.2f} dB")
    print(
        "bits | xy only | Cholesky only: geometric / uniform diag | colour only | all: geometric / uniform"
    )
    for bits in (int(b) for b in args.bits.split(",")):
        quant = replace(cfg.quant, chol_bits=bits, rgb_bits=bits)
        grid = make_grid(g, h, w, quant)
        q = dequantize(quantize(g, grid), grid)
        uni = _uniform_diagonals(g, bits, quant.range_quantile)
        uni_chol = torch.stack([uni[:, 0], q.chol[:, 1], uni[:, 2]], dim=1)
        row = {
            "bits": bits,
            "float": psnr(g),
            "xy_only": psnr(Gaussians(q.xy_px, g.chol, g.rgb)),
            "chol_only_geometric": psnr(Gaussians(g.xy_px, q.chol, g.rgb)),
            "chol_only_uniform": psnr(Gaussians(g.xy_px, uni_chol, g.rgb)),
            "rgb_only": psnr(Gaussians(g.xy_px, g.chol, q.rgb)),
            "all_geometric": psnr(q),
            "all_uniform": psnr(Gaussians(q.xy_px, uni_chol, q.rgb)),
        }
        rows.append(row)
        print(
            f"{bits} | {row['xy_only']:.2f} | {row['chol_only_geometric']:.2f} / "
            f"{row['chol_only_uniform']:.2f} | {row['rgb_only']:.2f} | "
            f"{row['all_geometric']:.2f} / {row['all_uniform']:.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"clip": str(args.clip), "quality": args.quality, "gaussians": len(g), "rows": rows},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
