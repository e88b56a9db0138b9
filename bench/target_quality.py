"""Target-quality mode (issue 14, item 4): hit rate, overshoot, rate and search cost.

For each clip segment and each target, every GOP runs the search of ``codec/target.py``
(``encode_gop_target``, in this process, one torch thread) and the table gives: GOPs within
[target, target + 0.5 dB] (the hit rate), the mean overshoot above the target of GOPs that
reached it, the chosen payloads' rate (GOP payload bpp), the search's cost (trial encodes per
GOP, seconds per GOP, and seconds per GOP over the seconds of one trial), and each GOP's
trials. Results are written after every search, so an interrupted run keeps what it measured.

    OMP_NUM_THREADS=1 .venv/bin/python bench/target_quality.py \\
        "carphone=/work/shared/data/carphone_pristine.mp4:0:20:10:31.5,34" \\
        "Megamind=/work/shared/data/Megamind.avi:1:10:5:36.5,39" \\
        "box=/work/shared/data/box.mp4:0:10:5:31.5,34"

Each spec is ``NAME[@PRESET]=PATH:START:FRAMES:GOP:TARGET[,TARGET...]`` (PSNR targets in dB;
prefix the target list with ``msssim/`` for MS-SSIM targets; PRESET defaults to ``--preset``). Writes JSON (default
``bench/results/target_quality.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from codec.config import CodecConfig  # noqa: E402
from codec.target import BAND_DB, encode_gop_target  # noqa: E402
from codec.video import read_frames  # noqa: E402


def parse_spec(spec: str, preset: str) -> dict[str, Any]:
    name, _, rest = spec.partition("=")
    name, _, spec_preset = name.partition("@")
    path, start, frames, gop, targets = rest.rsplit(":", 4)
    metric = "psnr"
    if targets.startswith("msssim/"):
        metric, targets = "msssim", targets.removeprefix("msssim/")
    return {
        "name": name,
        "preset": spec_preset or preset,
        "path": path,
        "start": int(start),
        "frames": int(frames),
        "gop": int(gop),
        "metric": metric,
        "targets": [float(t) for t in targets.split(",")],
    }


def run_target(
    frames: np.ndarray, spec: dict[str, Any], target: float, preset: str
) -> dict[str, Any]:
    """Every GOP of ``frames`` searched for ``target``; the row of the table."""
    key = "target_psnr" if spec["metric"] == "psnr" else "target_msssim"
    cfg = CodecConfig.preset(preset, 5, gop=spec["gop"], **{key: target})  # type: ignore[arg-type]
    gops: list[dict[str, Any]] = []
    n_bytes = 0
    for i, first in enumerate(range(0, len(frames), spec["gop"])):
        chunk = frames[first : first + spec["gop"]]
        result, report = encode_gop_target(chunk, cfg)
        assert report is not None
        n_bytes += len(result.payload)
        row = {"gop": i, **report.to_dict()}
        gops.append(row)
        print(
            f"  {spec['name']} target {target} GOP {i}: {report.status}, reached "
            f"{report.reached:.4f} at q{report.quality:.2f}, {len(report.trials)} trials "
            f"{[(t.quality, round(t.value, 3)) for t in report.trials]}, {report.seconds:.0f} s",
            flush=True,
        )
    hit = [g for g in gops if g["status"] in ("in_band", "above_band")]
    trial_seconds = [t["seconds"] for g in gops for t in g["trials"]]
    t, h, w = frames.shape[:3]
    return {
        "clip": spec["name"],
        "preset": preset,
        "frames": f"{spec['start']}..{spec['start'] + t - 1}",
        "gop_frames": spec["gop"],
        "metric": spec["metric"],
        "target": target,
        "gops": len(gops),
        "in_band": sum(1 for g in gops if g["status"] == "in_band"),
        "hit_rate": sum(1 for g in gops if g["status"] == "in_band") / len(gops),
        "reached_target": len(hit),
        "mean_overshoot": float(np.mean([g["reached"] - g["target"] for g in hit]))
        if hit
        else None,
        "bpp": n_bytes * 8 / (t * h * w),
        "trials_per_gop": float(np.mean([g["n_trials"] for g in gops])),
        "seconds_per_gop": float(np.mean([g["seconds"] for g in gops])),
        "search_cost_x": float(
            sum(g["seconds"] for g in gops) / np.mean(trial_seconds) / len(gops)
        ),
        "per_gop": gops,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("specs", nargs="+", help="NAME=PATH:START:FRAMES:GOP:TARGET[,TARGET...]")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("bench/results/target_quality.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    out: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "preset": args.preset,
        "threads": args.threads,
        "band_db": BAND_DB,
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
        "loadavg_start": os.getloadavg(),
        "rows": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for text in args.specs:
        spec = parse_spec(text, args.preset)
        frames = read_frames(spec["path"], spec["start"], spec["frames"])
        for target in spec["targets"]:
            row = run_target(frames, spec, target, spec["preset"])
            out["rows"].append(row)
            out["loadavg_now"] = os.getloadavg()
            out["wall_seconds"] = time.time() - started
            args.out.write_text(json.dumps(out, indent=2))
    rows = out["rows"]
    gops = sum(r["gops"] for r in rows)
    in_band = sum(r["in_band"] for r in rows)
    out["overall"] = {"gops": gops, "in_band": in_band, "hit_rate": in_band / gops}
    args.out.write_text(json.dumps(out, indent=2))
    print(
        "\n| clip | preset | frames / GOP | target | GOPs in band | mean overshoot | bpp "
        "| trials / GOP | s / GOP | cost (x one encode) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        over = f"{r['mean_overshoot']:+.3f}" if r["mean_overshoot"] is not None else "n/a"
        print(
            f"| {r['clip']} | {r['preset']} | {r['frames']} / {r['gop_frames']} | "
            f"{r['target']} | {r['in_band']}/{r['gops']} | {over} | "
            f"{r['bpp']:.4f} | {r['trials_per_gop']:.2f} | {r['seconds_per_gop']:.0f} | "
            f"x{r['search_cost_x']:.2f} |"
        )
    print(
        f"\noverall: {in_band}/{gops} GOPs in the band ({in_band / gops:.0%}); "
        f"load average {out['loadavg_start']} at start, {os.getloadavg()} at the end"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
