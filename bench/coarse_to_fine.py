"""Coarse-to-fine I-frames (issue 8, item 3): does fitting first at half resolution pay?

For one frame of each clip, the `fast` preset's I-frame fit (q4) from the same superpixel
initialisation, run (a) as the preset does, at full resolution for its cap, and (b) first on the
2x2-averaged frame with the Gaussians scaled by 1/2 (positions and Cholesky factors) for
``n_small`` steps, then scaled back and fitted at full resolution for ``n_full`` steps. Prints
PSNR (before quantisation) and CPU seconds per variant; writes JSON.

    OMP_NUM_THREADS=1 .venv/bin/python bench/coarse_to_fine.py \\
        ../shared/data/carphone_pristine.mp4:0 ../shared/data/Megamind.avi:150 ../shared/data/box.mp4:0
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from codec.config import CodecConfig
from codec.fit import fit_iframe
from codec.gaussians import Gaussians
from codec.gop import _initialise, gaussian_count
from codec.init import count_for_detail
from codec.render import get_backend
from codec.video import read_frames

VARIANTS = {"full": (0, 0), "200+200": (200, 200), "300+100": (300, 100), "200+100": (200, 100)}


def _scaled(g: Gaussians, s: float) -> Gaussians:
    return Gaussians(g.xy_px * s, g.chol * s, g.rgb)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("clips", nargs="+", help="PATH:FRAME")
    p.add_argument("--quality", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("bench/results/coarse_to_fine.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = CodecConfig.preset("fast", quality=args.quality)
    backend = get_backend("cpu")
    results = []
    for spec in args.clips:
        path, _, idx = spec.rpartition(":")
        frame = torch.from_numpy(read_frames(path, int(idx), 1)[0]).float() / 255.0
        h, w, _ = frame.shape
        small = F.avg_pool2d(frame.permute(2, 0, 1)[None], 2)[0].permute(1, 2, 0).contiguous()
        n = count_for_detail(gaussian_count(cfg, h, w), frame)
        row: dict[str, object] = {"clip": path, "frame": int(idx), "size": [w, h]}
        for name, (n_small, n_full) in VARIANTS.items():
            gen = torch.Generator().manual_seed(0)
            g = _initialise(frame, n, cfg, None, gen)
            t0 = time.process_time()
            if n_small:
                coarse = replace(cfg.fit, iframe_iters=n_small, densify=False)
                g = _scaled(
                    fit_iframe(small, _scaled(g, 0.5), coarse, backend, generator=gen).gaussians,
                    2.0,
                )
            fine = replace(cfg.fit, iframe_iters=n_full or cfg.fit.iframe_iters)
            res = fit_iframe(frame, g, fine, backend, generator=gen)
            row[name] = {"psnr_db": res.psnr_db, "cpu_s": time.process_time() - t0}
        results.append(row)
        print(
            Path(path).name,
            " | ".join(
                f"{k} {v['psnr_db']:.2f} dB {v['cpu_s']:.1f} s"
                for k, v in row.items()
                if isinstance(v, dict)
            ),  # type: ignore[index]
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"quality": args.quality, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
