"""CPU speed of the tile-binned ``torch``, patch-row ``patch`` and fused C++ ``cpu`` render
backends against the dense reference.

Times forward, forward+backward and no-grad renders (median of ``--repeats`` runs,
after one warm-up) at 176x144 with 1000 Gaussians and 720x528 with 15000 Gaussians
(typical 3-sigma radius 3-8 px), plus ``gaussians_touching`` on a 10% mask. The
dense reference is timed where its [N, H, W] tensors stay under ``--dense-max-elems``.
(``patch`` delegates no-grad renders and ``gaussians_touching`` to ``torch``.)
Prints a table and writes JSON to ``bench/results/render_speed.json``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/render_speed.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from codec.gaussians import Gaussians, radius_3sigma
from codec.render.base import RenderBackend
from codec.render.dense import DenseBackend
from codec.render.fused_cpu import FusedCpuBackend, fused_available
from codec.render.torch_patches import PatchBackend
from codec.render.torch_tiles import TorchTileBackend

CASES = [(176, 144, 1000), (720, 528, 15000)]  # (width, height, n)


def make_gaussians(n: int, height: int, width: int, seed: int) -> Gaussians:
    """N Gaussians spread over the frame, sigma 1..2.7 px (3-sigma radius 3-8 px)."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([float(width), float(height)])
    l11 = 1.0 + 1.67 * torch.rand(n, generator=gen)
    l22 = 1.0 + 1.67 * torch.rand(n, generator=gen)
    l21 = 0.7 * torch.randn(n, generator=gen)
    rgb = torch.rand(n, 3, generator=gen) * 0.3
    return Gaussians(xy, torch.stack([l11, l21, l22], dim=1), rgb).clamped()


def timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """Wall time (median, min) and process CPU time (median) in ms over ``repeats`` calls
    after one warm-up. CPU time is the steadier figure on a shared, oversubscribed box."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return {
        "median_ms": round(statistics.median(wall), 2),
        "min_ms": round(min(wall), 2),
        "cpu_median_ms": round(statistics.median(cpu), 2),
    }


def bench_backend(
    backend: RenderBackend, g: Gaussians, height: int, width: int, repeats: int
) -> dict[str, dict[str, float]]:
    target = torch.rand(height, width, 3, generator=torch.Generator().manual_seed(1))
    mask = torch.rand(height, width, generator=torch.Generator().manual_seed(2)) < 0.1
    params = [
        g.xy_px.clone().requires_grad_(True),
        g.chol.clone().requires_grad_(True),
        g.rgb.clone().requires_grad_(True),
    ]
    g_grad = Gaussians(*params)

    def forward() -> object:
        return backend.render(g_grad, height, width)

    def forward_backward() -> object:
        loss = ((backend.render(g_grad, height, width) - target) ** 2).mean()
        return torch.autograd.grad(loss, params)

    return {
        "forward": timed(forward, repeats),
        "forward_backward": timed(forward_backward, repeats),
        "nograd": timed(lambda: backend.render_nograd(g, height, width), repeats),
        "touching_10pct": timed(lambda: backend.gaussians_touching(g, mask), repeats),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--dense-max-elems", type=float, default=5e7, help="skip dense when N*H*W exceeds this"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "render_speed.json",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tiles, patches, dense = TorchTileBackend(), PatchBackend(), DenseBackend()
    results = []
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), medians of {args.repeats} runs (ms)"
    )
    print(
        f"{'case':>18} {'backend':>10} {'forward':>9} {'fwd+bwd':>9} {'nograd':>9} {'touching':>9}"
    )
    for width, height, n in CASES:
        g = make_gaussians(n, height, width, seed=0)
        case: dict[str, object] = {
            "width": width,
            "height": height,
            "n": n,
            "median_radius_px": round(float(radius_3sigma(g.chol).median()), 2),
        }
        timings = {
            "torch": bench_backend(tiles, g, height, width, args.repeats),
            "patch": bench_backend(patches, g, height, width, args.repeats),
        }
        if fused_available():
            timings["cpu"] = bench_backend(FusedCpuBackend(), g, height, width, args.repeats)
        with torch.no_grad():
            diff = (patches.render(g, height, width) - tiles.render(g, height, width)).abs().max()
        case["patch_max_abs_diff_vs_torch"] = float(diff)
        if n * height * width <= args.dense_max_elems:
            timings["dense"] = bench_backend(dense, g, height, width, args.repeats)
            with torch.no_grad():
                ref = dense.render(g, height, width)
                diff = (tiles.render(g, height, width) - ref).abs().max()
                diff_patch = (patches.render(g, height, width) - ref).abs().max()
            case["max_abs_diff_vs_dense"] = float(diff)
            case["patch_max_abs_diff_vs_dense"] = float(diff_patch)
        else:
            case["dense"] = (
                f"skipped: N*H*W = {n * height * width:.2e} > {args.dense_max_elems:.0e}"
            )
        case["timings"] = timings
        results.append(case)
        label = f"{width}x{height} n={n}"
        for name, t in timings.items():
            for unit, key in (("wall", "median_ms"), ("cpu", "cpu_median_ms")):
                row = " ".join(
                    f"{t[k][key]:9.1f}"
                    for k in ("forward", "forward_backward", "nograd", "touching_10pct")
                )
                print(f"{label:>18} {name + ' ' + unit:>10} {row}")
        for k in ("forward", "forward_backward"):
            wall, cpu = (
                timings["torch"][k][key] / timings["patch"][k][key]
                for key in ("median_ms", "cpu_median_ms")
            )
            print(
                f"{'':>18} {'':>10} {k}: patch is {wall:.1f}x (wall), {cpu:.1f}x (cpu) faster than torch"
            )
        print(f"{'':>18} {'':>10} max |patch - torch| = {case['patch_max_abs_diff_vs_torch']:.2e}")
        if "dense" in timings:
            for k in ("forward", "forward_backward", "nograd"):
                speedup = timings["dense"][k]["median_ms"] / timings["torch"][k]["median_ms"]
                print(f"{'':>18} {'':>10} {k}: torch is {speedup:.1f}x faster than dense (wall)")
            print(f"{'':>18} {'':>10} max |torch - dense| = {case['max_abs_diff_vs_dense']:.2e}")
            print(
                f"{'':>18} {'':>10} max |patch - dense| = {case['patch_max_abs_diff_vs_dense']:.2e}"
            )
        else:
            print(f"{'':>18} {'dense':>10} {case['dense']}")
    report = {
        "torch_version": torch.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "cases": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
