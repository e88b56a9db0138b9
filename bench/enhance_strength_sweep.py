"""How the shipped enhancer changes a GOP's squared error at fixed strengths, and with a fitted
(unquantised) modulation, on the plain encodes cached by ``bench/enhance_bd.py``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/enhance_strength_sweep.py \\
        var/enhance_bench/carphone_pristine-f10-g10-fast-q2.npz \\
        var/enhance_bench/carphone_pristine-f10-g10-fast-q6.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from codec.enhance.adapt import fit_modulation, run_network, sse
from codec.enhance.weights import load_enhancer

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
FIT_T = 0.5


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("caches", type=Path, nargs="+", help="enhance_bd.py cache files (.npz)")
    args = ap.parse_args(argv)
    net, _ = load_enhancer()
    for path in args.caches:
        with np.load(path) as z:
            source, recon = z["source0"], z["recon0"]  # the first GOP
        plain = sse(recon, source)

        def change(out: np.ndarray, plain: float = plain, source: np.ndarray = source) -> float:
            return round((sse(out, source) - plain) / plain * 100, 2)

        row = [change(run_network(net, recon, t, None)) for t in STRENGTHS]
        m = fit_modulation(net, source, recon, FIT_T)
        mod = change(run_network(net, recon, FIT_T, m))
        print(f"{path.name}: SSE change % at t={STRENGTHS}: {row}; modulated at t={FIT_T}: {mod}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
