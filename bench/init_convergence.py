"""Iterations to 30 dB: content-aware (superpixel) against random initialisation.

The machine-independent figure of MEASURING.md ("Initialisation quality"): on one
real frame and at the same Gaussian count, how many fitting iterations each
initialisation needs to reach the target PSNR with the default ``FitConfig``.
Issue targets: superpixel init reaches 30 dB in at most 750 iterations and in at
most a fifth of the iterations random init needs.

    .venv/bin/python bench/init_convergence.py                    # carphone, frame 0
    .venv/bin/python bench/init_convergence.py --megamind         # + Megamind frame 150 at 360x264
    .venv/bin/python bench/init_convergence.py --megamind --random-seeds 0,1,2 --random-lr-mults 1,2,4

The headline ratio compares both inits under the same FitConfig; ``--random-lr-mults``
also fits random init with larger base learning rates (it moves Gaussians much further,
so it likes larger steps) and reports the ratio against its best one as well.

Prints a table and writes JSON (default ``bench/results/init_convergence.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from codec.config import FitConfig  # noqa: E402
from codec.fit import iters_to_psnr, psnr_of  # noqa: E402
from codec.gaussians import Gaussians  # noqa: E402
from codec.init import random_init, superpixel_init  # noqa: E402
from codec.render import RenderBackend, get_backend  # noqa: E402

DATA = Path("/work/shared/data")
TARGET_MAX_ITERS = 750  # issue target for superpixel init
TARGET_RATIO = 5.0  # random needs at least this many times the iterations


def read_frame(path: Path, index: int, scale: float = 1.0) -> np.ndarray:
    """Frame ``index`` of a video as uint8 [H, W, 3], optionally resized by ``scale`` (area)."""
    with av.open(str(path)) as container:
        for i, fr in enumerate(container.decode(video=0)):
            if i == index:
                img: np.ndarray = fr.to_ndarray(format="rgb24")
                break
        else:
            raise SystemExit(f"{path} has no frame {index}")
    if scale != 1.0:
        import cv2

        h, w = img.shape[:2]
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img)


def run_case(
    name: str,
    frame_u8: np.ndarray,
    n: int,
    cfg: FitConfig,
    backend: RenderBackend,
    args: argparse.Namespace,
) -> dict[str, Any]:
    frame = torch.from_numpy(frame_u8).to(torch.float32) / 255.0
    h, w, _ = frame.shape

    def measure(
        init: Gaussians, init_ms: float, run_cfg: FitConfig, max_iters: int
    ) -> dict[str, Any]:
        start = time.perf_counter()
        iters = iters_to_psnr(frame, init, run_cfg, backend, args.target_db, max_iters)
        return {
            "init_ms": round(init_ms, 1),
            "init_psnr_db": round(psnr_of(backend.render_nograd(init, h, w), frame), 2),
            "iters": iters,
            "fit_seconds": round(time.perf_counter() - start, 2),
            "lr": run_cfg.lr,
        }

    start = time.perf_counter()
    sp_init = superpixel_init(frame, n)
    sp = measure(sp_init, 1000 * (time.perf_counter() - start), cfg, args.max_iters)
    print(f"[{name}] superpixel: {sp}", flush=True)

    runs: list[dict[str, Any]] = []
    for mult in args.random_lr_mults:
        for seed in args.random_seeds:
            start = time.perf_counter()
            r_init = random_init(h, w, n, generator=torch.Generator().manual_seed(seed))
            r_ms = 1000 * (time.perf_counter() - start)
            r = measure(r_init, r_ms, replace(cfg, lr=cfg.lr * mult), args.max_iters_random)
            r.update(seed=seed, lr_mult=mult)
            print(f"[{name}] random seed {seed} lr x{mult}: {r}", flush=True)
            runs.append(r)

    def median_iters(mult: float) -> float | None:
        """Median over seeds; None when some seed never reached the target."""
        its = [r["iters"] for r in runs if r["lr_mult"] == mult]
        return None if None in its else float(statistics.median(its))

    def ratio_to(random_iters: float | None) -> float | None:
        if sp["iters"] is None:
            return None
        top = args.max_iters_random if random_iters is None else random_iters
        return round(top / max(1, sp["iters"]), 2)  # a lower bound when random never got there

    same = median_iters(1.0)
    best_mult = min(args.random_lr_mults, key=lambda m: median_iters(m) or math.inf)
    ratio = ratio_to(same)
    return {
        "name": name,
        "height": h,
        "width": w,
        "n_gaussians": n,
        "target_db": args.target_db,
        "superpixel": sp,
        "random_runs": runs,
        "random_iters_median": same,  # same FitConfig as superpixel (the headline)
        "ratio_random_over_superpixel": ratio,
        "ratio_is_lower_bound": same is None,
        "random_best_lr_mult": best_mult,  # random init with the base lr that suits it best
        "random_best_lr_iters_median": median_iters(best_mult),
        "ratio_vs_best_lr_random": ratio_to(median_iters(best_mult)),
        "meets_targets": sp["iters"] is not None
        and sp["iters"] <= TARGET_MAX_ITERS
        and ratio is not None
        and ratio >= TARGET_RATIO,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--clip", type=Path, default=DATA / "carphone_pristine.mp4")
    p.add_argument("--frame", type=int, default=0, help="frame index in --clip")
    p.add_argument("--n", type=int, default=None, help="Gaussians (default: FitConfig density)")
    p.add_argument("--target-db", type=float, default=30.0)
    p.add_argument("--max-iters", type=int, default=3000, help="cap for superpixel init")
    p.add_argument("--max-iters-random", type=int, default=5000, help="cap for random init")
    p.add_argument("--random-seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0])
    p.add_argument(
        "--random-lr-mults",
        type=lambda s: [float(v) for v in s.split(",")],
        default=[1.0],
        help="base-lr multipliers for random init; x1 (always run) is the headline, the best is reported too",
    )
    p.add_argument("--megamind", action="store_true", help="also run on Megamind.avi")
    p.add_argument("--megamind-path", type=Path, default=DATA / "Megamind.avi")
    p.add_argument("--megamind-frame", type=int, default=150)
    p.add_argument("--megamind-scale", type=float, default=0.5)
    p.add_argument(
        "--megamind-n", type=int, default=1000, help="Gaussians for Megamind (paper: 1000 at 360p)"
    )
    p.add_argument("--backend", default="torch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "init_convergence.json")
    args = p.parse_args(argv)
    if 1.0 not in args.random_lr_mults:
        args.random_lr_mults = [1.0, *args.random_lr_mults]

    torch.set_num_threads(args.threads)
    cfg = FitConfig()
    backend = get_backend(args.backend)
    img = read_frame(args.clip, args.frame)
    h, w = img.shape[:2]
    n = args.n if args.n is not None else max(1, round(cfg.gaussians_per_kpx * h * w / 1000))
    cases: list[tuple[str, np.ndarray, int]] = [(f"{args.clip.name}#{args.frame}", img, n)]
    if args.megamind:
        mm = read_frame(args.megamind_path, args.megamind_frame, args.megamind_scale)
        name = f"{args.megamind_path.name}#{args.megamind_frame}@x{args.megamind_scale}"
        cases.append((name, mm, args.megamind_n))

    results = [run_case(name, img, n, cfg, backend, args) for name, img, n in cases]

    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "backend": args.backend,
        "threads": args.threads,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "fit_config": asdict(cfg),
        "cases": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(
        f"\n{'case':<30} {'N':>5} {'sp init dB':>10} {'sp iters':>8} {'rnd iters':>9} "
        f"{'ratio':>6} {'rnd best-lr':>11} {'ratio':>6}  targets"
    )

    def fmt(v: float | None, lower: bool = False) -> str:
        return f">{args.max_iters_random}" if v is None else ((">=" if lower else "") + f"{v:g}")

    for r in results:
        sp = r["superpixel"]
        print(
            f"{r['name']:<30} {r['n_gaussians']:>5} {sp['init_psnr_db']:>10.2f} {fmt(sp['iters']):>8} "
            f"{fmt(r['random_iters_median']):>9} {fmt(r['ratio_random_over_superpixel'], r['ratio_is_lower_bound']):>6} "
            f"{fmt(r['random_best_lr_iters_median']) + ' (x' + format(r['random_best_lr_mult'], 'g') + ')':>11} "
            f"{fmt(r['ratio_vs_best_lr_random']):>6}  {'met' if r['meets_targets'] else 'MISSED'}"
        )
    print(f"wrote {args.out}")
    return 0 if all(r["meets_targets"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
