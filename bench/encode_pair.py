"""Paired whole encodes of one clip by several checkouts of splatpack: the speed ratio of a change.

Each checkout (a directory holding ``codec/``, e.g. ``git worktree add --detach /tmp/old 20eb71a``)
encodes the clip in turn (A, B, A, B, ... for ``--repeats`` rounds) with the same interpreter,
``OMP_NUM_THREADS`` and options, so load on a shared machine hits them alike. For each run it
records the process's CPU and wall seconds, the encoder's own wall seconds and, where the checkout
reports them (``cpu_seconds`` per frame in ``--json``, since 2026-12), its CPU seconds, and the
rate and PSNR of the file. Prints one line per run and a summary of medians and ratios against
the first checkout; writes JSON.

    OMP_NUM_THREADS=1 .venv/bin/python bench/encode_pair.py ../shared/data/carphone_pristine.mp4 \\
        --frames 60 --quality 4 --gop 60 --trees . /tmp/old --out bench/results/encode_pair.json

Older checkouts without ``--threads``/``--workers``/``-y`` get the options they understand (the
tool looks at ``encode --help``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _encode_help(tree: Path, env: dict[str, str]) -> str:
    cmd = [sys.executable, "-m", "codec", "encode", "--help"]
    return subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True).stdout


def _run(tree: Path, args: argparse.Namespace, scratch: Path, help_text: str) -> dict[str, Any]:
    """One encode by ``tree``; its figures."""
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(args.threads))
    out, js = scratch / f"{tree.name or 'tree'}.gsv", scratch / f"{tree.name or 'tree'}.json"
    for f in (out, js):
        f.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "codec", "encode", str(args.clip), "-o", str(out)]
    cmd += ["--frames", str(args.frames), "--quality", str(args.quality), "--gop", str(args.gop)]
    cmd += ["--json", str(js), "--quiet"]
    if "--threads" in help_text:
        cmd += ["--threads", str(args.threads), "--workers", str(args.workers)]
    if args.start and "--start" in help_text:
        cmd += ["--start", str(args.start)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=tree, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary = json.loads(js.read_text())
    frames = summary.get("frames") or []
    enc_cpu = (
        sum(f["cpu_seconds"] for f in frames)
        if frames and all("cpu_seconds" in f for f in frames)
        else None
    )
    return {
        "process_cpu_s": cpu,
        "process_wall_s": wall,
        "encoder_wall_s": summary["encode_seconds"],
        "encoder_cpu_s": enc_cpu,
        "bpp": summary["bits_per_pixel"],
        "psnr_db": summary["psnr_db"],
    }


def _median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("clip", type=Path)
    p.add_argument("--trees", type=Path, nargs="+", required=True, help="checkouts, first = A")
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--quality", type=int, default=4)
    p.add_argument("--gop", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench/results/encode_pair.json"))
    args = p.parse_args(argv)
    trees = [t.resolve() for t in args.trees]
    args.clip = args.clip.resolve()  # the encodes run inside each checkout
    runs: dict[str, list[dict[str, Any]]] = {str(t): [] for t in trees}
    with tempfile.TemporaryDirectory() as tmp:
        helps = {t: _encode_help(t, dict(os.environ, PYTHONPATH=str(t))) for t in trees}
        for _ in range(args.repeats):
            for t in trees:
                r = _run(t, args, Path(tmp), helps[t])
                runs[str(t)].append(r)
                enc = f"{r['encoder_cpu_s']:.1f}" if r["encoder_cpu_s"] is not None else "-"
                print(
                    f"{t}: process CPU {r['process_cpu_s']:.1f} s, wall {r['process_wall_s']:.1f} s;"
                    f" encoder wall {r['encoder_wall_s']:.1f} s, CPU {enc} s;"
                    f" {r['bpp']:.4f} bpp, {r['psnr_db']:.2f} dB",
                    flush=True,
                )
    summary: dict[str, Any] = {}
    base = str(trees[0])
    for t, rs in runs.items():
        med = {k: _median([r[k] for r in rs]) for k in rs[0]}
        summary[t] = med
    for t in runs:
        if t == base:
            continue
        ratios = {}
        for k in ("process_cpu_s", "process_wall_s", "encoder_wall_s", "encoder_cpu_s"):
            a, b = summary[base][k], summary[t][k]
            ratios[k] = b / a if a and b else None
        summary[t]["times_slower_than_first"] = ratios
        print(f"{t} / {base}: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items() if v))
    write_record(args.out, runs, summary)
    return 0


def write_record(out: Path, runs: Any, summary: dict[str, Any]) -> None:
    """The JSON of a paired run: command, machine, load, every run and the summary."""
    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average": os.getloadavg(),
        "runs": runs,
        "summary": summary,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
