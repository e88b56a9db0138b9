"""C++/OpenMP or numba for the fused CPU renderer? One kernel, both ways, timed in one run.

The kernel is the canonical no-gradient forward (codec/render/csrc/splat_cpu.cpp,
``render_forward``): tile lists, one pass per 16x16 tile, polynomial exp, per-pixel sums in
Gaussian order. The numba version below is the same algorithm written for ``numba.njit(parallel=
True)`` (``prange`` over tiles, fastmath off so it stays IEEE). Both get the same drawable
Gaussians and boxes; the script checks that they agree and prints the median CPU and wall ms of
each over ``--repeats`` calls at 1 and 2 threads. numba is not a project dependency; install it
into the venv to run this (``.venv/bin/pip install numba``).

    OMP_NUM_THREADS=1 .venv/bin/python bench/kernel_choice.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render_speed import make_gaussians, timed  # noqa: E402

from codec.render import cpu_ext  # noqa: E402
from codec.render.canonical import _drawable  # noqa: E402


def numba_kernel() -> Callable[..., np.ndarray]:
    """The forward kernel compiled by numba (imported here: numba is optional)."""
    import numba as nb

    @nb.njit(inline="always")
    def det_exp(h: float) -> float:
        f = np.float32
        hc = max(h, f(-5.0))
        n = (hc * f(1.44269504088896341) + f(12582912.0)) - f(12582912.0)
        r = hc - n * f(0.693145751953125)
        r = r - n * f(1.42860682030941723e-06)
        p = f(1.0 / 720)
        for c in (f(1 / 120), f(1 / 24), f(1 / 6), f(0.5), f(1.0), f(1.0)):
            p = p * r + c
        return p * f(2.0) ** np.int32(n)

    @nb.njit(parallel=True, fastmath=False)
    def render(xy, abc, rgb, box, start, ids, height, width, tiles_x):  # type: ignore[no-untyped-def]
        out = np.zeros((height, width, 3), dtype=np.float32)
        n_tiles = start.shape[0] - 1
        for t in nb.prange(n_tiles):
            tx, ty = t % tiles_x, t // tiles_x
            acc = np.zeros((3, 16, 16), dtype=np.float32)
            for k in range(start[t], start[t + 1]):
                i = ids[k]
                x0, x1 = max(box[i, 0], tx * 16), min(box[i, 1], tx * 16 + 15)
                y0, y1 = max(box[i, 2], ty * 16), min(box[i, 3], ty * 16 + 15)
                a = np.float32(-0.5) * abc[i, 0]
                b2 = np.float32(2.0) * (np.float32(-0.5) * abc[i, 1])
                c = np.float32(-0.5) * abc[i, 2]
                for py in range(y0, y1 + 1):
                    dy = (np.float32(py) + np.float32(0.5)) - xy[i, 1]
                    t3 = (c * dy) * dy
                    for px in range(x0, x1 + 1):
                        dx = (np.float32(px) + np.float32(0.5)) - xy[i, 0]
                        h = (a * dx) * dx + (b2 * dx) * dy
                        h = h + t3
                        if h >= np.float32(-4.5):
                            w = det_exp(h)
                            for ch in range(3):
                                acc[ch, py - ty * 16, px - tx * 16] += w * rgb[i, ch]
            for yy in range(min(16, height - ty * 16)):
                for xx in range(min(16, width - tx * 16)):
                    for ch in range(3):
                        out[ty * 16 + yy, tx * 16 + xx, ch] = acc[ch, yy, xx]
        return out

    return render  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("bench/results/kernel_choice.json"))
    args = parser.parse_args(argv)
    ext = cpu_ext.load()
    if ext is None:
        raise SystemExit(f"the C++ kernel did not build: {cpu_ext.load_error()}")
    try:
        nb_render = numba_kernel()
    except ImportError:
        raise SystemExit("numba is not installed: .venv/bin/pip install numba") from None
    import numba as nb

    height, width, n = 528, 720, 15000
    xy, abc, rgb, box = _drawable(ext, make_gaussians(n, height, width, seed=0), height, width)
    _, start, ids = ext.render_forward(xy, abc, rgb, box, height, width, True)
    np_args = (xy.numpy(), abc.numpy(), rgb.numpy(), box.numpy(), start.numpy(), ids.numpy())
    tiles_x = -(-width // 16)
    cpp_img = ext.render_forward(xy, abc, rgb, box, height, width, False)[0]
    nb_img = nb_render(*np_args, height, width, tiles_x)
    diff = float(np.abs(nb_img - cpp_img.numpy()).max())
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        nb.set_num_threads(threads)
        rows.append(
            {
                "threads": threads,
                "cpp": timed(
                    lambda: ext.render_forward(xy, abc, rgb, box, height, width, False),
                    args.repeats,
                ),
                "numba": timed(lambda: nb_render(*np_args, height, width, tiles_x), args.repeats),
            }
        )
        r = rows[-1]
        print(
            f"{width}x{height} n={n} {threads} thread(s): C++ {r['cpp']['cpu_median_ms']} ms CPU "
            f"({r['cpp']['median_ms']} wall), numba {r['numba']['cpu_median_ms']} ms CPU "
            f"({r['numba']['median_ms']} wall)"
        )
    print(f"max |numba - C++| = {diff:.2e} (numba's 2**n and loop order may differ by an ulp)")
    report = {
        "size": [width, height],
        "n": n,
        "max_abs_diff": diff,
        "rows": rows,
        "load_average": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
