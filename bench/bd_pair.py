"""BD-rate and speed of several checkouts of splatpack over a range of quality levels, in one run.

The rate-distortion companion of ``bench/encode_pair.py``: every checkout encodes the clip at
each ``--qualities`` level (interleaved level by level, so load on a shared machine hits them
alike), then each checkout's curve (payload-inclusive file bpp, mean RGB PSNR, as the CLI's
``--json`` reports them) gets its BD-rate (PSNR) against the first checkout's, with the summed
encoder and process CPU seconds over the levels and their ratio. Levels mean different things in
different checkouts (the ladder changes); BD-rate compares the curves over their shared PSNR
range, whatever the levels.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bd_pair.py ../shared/data/carphone_pristine.mp4 \\
        --frames 60 --gop 60 --qualities 2,4,6,8 --trees /tmp/old . --out bench/results/bd_pair.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from encode_pair import _encode_help, _run, write_record  # noqa: E402

from codec.metrics import bd_rate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("clip", type=Path)
    p.add_argument("--trees", type=Path, nargs="+", required=True, help="checkouts, first = anchor")
    p.add_argument("--qualities", default="2,4,6,8", help="levels, at least 4 (cubic BD fit)")
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--gop", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench/results/bd_pair.json"))
    args = p.parse_args(argv)
    levels = [int(q) for q in args.qualities.split(",")]
    trees = [t.resolve() for t in args.trees]
    args.clip = args.clip.resolve()  # the encodes run inside each checkout
    runs: dict[str, dict[int, dict[str, Any]]] = {str(t): {} for t in trees}
    with tempfile.TemporaryDirectory() as tmp:
        helps = {t: _encode_help(t, dict(os.environ, PYTHONPATH=str(t))) for t in trees}
        for q in levels:
            args.quality = q
            for t in trees:
                r = _run(t, args, Path(tmp), helps[t])
                runs[str(t)][q] = r
                enc = f"{r['encoder_cpu_s']:.1f}" if r["encoder_cpu_s"] is not None else "-"
                print(
                    f"q{q} {t}: process CPU {r['process_cpu_s']:.1f} s, encoder CPU {enc} s,"
                    f" wall {r['encoder_wall_s']:.1f} s; {r['bpp']:.4f} bpp, {r['psnr_db']:.2f} dB",
                    flush=True,
                )
    anchor = runs[str(trees[0])]
    summary: dict[str, Any] = {}
    for t, rs in runs.items():
        pts = [rs[q] for q in levels]
        s: dict[str, Any] = {
            "process_cpu_s": sum(r["process_cpu_s"] for r in pts),
            "encoder_wall_s": sum(r["encoder_wall_s"] for r in pts),
        }
        if t != str(trees[0]):
            a_pts = [anchor[q] for q in levels]
            s["bd_rate_psnr_pct"] = bd_rate(
                [r["bpp"] for r in a_pts],
                [r["psnr_db"] for r in a_pts],
                [r["bpp"] for r in pts],
                [r["psnr_db"] for r in pts],
            )
            s["process_cpu_ratio_anchor_over_this"] = (
                summary[str(trees[0])]["process_cpu_s"] / s["process_cpu_s"]
            )
            bd = s["bd_rate_psnr_pct"]
            print(
                f"{t} against {trees[0]}: BD-rate (PSNR) "
                + (f"{bd:+.1f}%" if bd is not None else "n/a (no PSNR overlap)")
                + f"; process CPU over the levels {s['process_cpu_s']:.0f} s against"
                f" {summary[str(trees[0])]['process_cpu_s']:.0f} s"
                f" ({s['process_cpu_ratio_anchor_over_this']:.1f}x less)"
            )
        summary[t] = s
    write_record(
        args.out, {t: {str(q): r for q, r in rs.items()} for t, rs in runs.items()}, summary
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
