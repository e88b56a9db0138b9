"""What progress within a GOP costs and how fresh it is (``workers/tasks.py``'s ProgressBoard).

On a local Ray cluster (1 CPU by default):

1. Cost of one report: a Ray task makes ``--calls`` fire-and-forget
   ``ProgressBoard.report`` calls (what a GOP task does after each frame) and times them;
   then the runner side times ``--reads`` blocking ``read`` round trips (the runner never
   blocks on them; this is the delay a read adds).
2. Freshness on a real GOP: the first ``--frames`` frames of ``--clip`` encoded as one
   GOP (``--preset``/``--quality``) through the real ``GopExecutor``, while this process
   polls ``frames_in_flight()`` every ``--poll`` seconds, as the runner's encode loop does.
   A frame's encode end is the task's start (its fault-dir marker) plus the encode
   seconds of the frames up to it (``FrameStats``); the lag is when the count was first
   seen minus that end. The runner's database write adds at most
   ``Settings.progress_write_seconds`` (1 s) on top.

    .venv/bin/python bench/progress_report.py
    .venv/bin/python bench/progress_report.py --clip ../shared/data/carphone_pristine.mp4 --frames 12

Prints the figures and writes JSON (default ``bench/results/progress_report.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import ray  # noqa: E402

from codec.config import CodecConfig  # noqa: E402
from codec.video import read_frames  # noqa: E402
from infra.settings import Settings  # noqa: E402
from workers.gops import plan_gops  # noqa: E402
from workers.tasks import GopExecutor, progress_board  # noqa: E402

DEFAULT_CLIP = ROOT.parent / "shared" / "data" / "carphone_pristine.mp4"


@ray.remote
def report_many(board: Any, token: str, calls: int) -> float:
    """Seconds per fire-and-forget report call, measured inside a Ray task."""
    start = time.perf_counter()
    for i in range(calls):
        board.report.remote(token, 0, i + 1)
    return (time.perf_counter() - start) / calls


def call_cost(calls: int, reads: int) -> dict[str, float]:
    board = progress_board()
    ray.get(board.open.remote("bench"))
    per_call = ray.get(report_many.remote(board, "bench", calls))
    ray.get(board.read.remote("bench"))  # the reports have landed
    times = []
    for _ in range(reads):
        t = time.perf_counter()
        ray.get(board.read.remote("bench"))
        times.append(time.perf_counter() - t)
    ray.get(board.close.remote("bench"))
    return {
        "report_call_us": per_call * 1e6,
        "read_roundtrip_ms_median": statistics.median(times) * 1e3,
        "read_roundtrip_ms_max": max(times) * 1e3,
    }


def freshness(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    frames = read_frames(args.clip, 0, args.frames)
    n = int(frames.shape[0])
    config = CodecConfig.preset(args.preset, args.quality).with_overrides(gop=n).to_dict()
    settings = Settings(
        data_dir=work / "var",
        storage_backend="local",
        storage_root=work / "storage",
        fault_dir=work / "faults",
    )
    executor = GopExecutor(settings, config)
    spec = plan_gops(n, n, "bench/").gops[0]
    executor.submit(spec, frames)
    first_seen: dict[int, float] = {}
    results = []
    while executor.in_flight:
        results += executor.wait(args.poll)
        now = time.time()
        seen = executor.frames_in_flight()
        for k in range(1, seen + 1):
            first_seen.setdefault(k, now)
    executor.close()
    (marker,) = (work / "faults").glob("started-000000-*")
    task_start = float(marker.read_text())
    ends, t = {}, task_start
    for k, stats in enumerate(results[0].frames, start=1):
        t += float(stats["encode_seconds"])
        ends[k] = t
    lags = [first_seen[k] - ends[k] for k in sorted(first_seen) if k in ends]
    return {
        "frames": n,
        "frame_encode_s_mean": statistics.mean(
            float(s["encode_seconds"]) for s in results[0].frames
        ),
        "counts_seen_before_the_result": len(first_seen),
        "lag_s_median": statistics.median(lags) if lags else None,
        "lag_s_max": max(lags) if lags else None,
        "gop_encode_s": results[0].encode_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--quality", type=int, default=4)
    parser.add_argument("--poll", type=float, default=0.2, help="runner loop wait, seconds")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--reads", type=int, default=50)
    parser.add_argument("--ray-cpus", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "progress_report.json"
    )
    args = parser.parse_args(argv)
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, logging_level=logging.WARNING)
    try:
        cost = call_cost(args.calls, args.reads)
        with tempfile.TemporaryDirectory() as tmp:
            fresh = freshness(args, Path(tmp))
    finally:
        ray.shutdown()
    overhead = cost["report_call_us"] * 1e-6 / fresh["frame_encode_s_mean"]
    out = {
        "machine": platform.node(),
        "args": {k: str(v) for k, v in vars(args).items()},
        **cost,
        **fresh,
        "report_share_of_frame_time": overhead,
    }
    print(json.dumps(out, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
