"""JavaScript decode speed (bitstream to Gaussian parameters) of the player on real streams.

Encodes the first ``--frames`` frames of a clip at each quality into ``.gsv`` files (cached
under ``bench/results/tmp/player/``; the fit is shortened with ``--iters``/``--piters`` so the
encode fits a shared 2-core box: decode cost depends on the Gaussian count and the number of
updates, not on how well they were polished), then in one run times, per file:

* ``node player/bench/decode-bench.mjs`` (whole-file decode, median of 5, after a warm-up), and
* the Python decoder's entropy decoding and dequantisation of the same file (no rendering), as
  the reference for a ratio measured on the same machine at the same time.

    OMP_NUM_THREADS=1 .venv/bin/python bench/player_decode.py ../shared/data/Megamind.avi
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

from codec.api import encode_video
from codec.bitstream import FrameKind, unpack_gop
from codec.config import CodecConfig
from codec.container import ContainerReader
from codec.entropy import ModelMemory, decode_inter, decode_intra
from codec.gop import _touched
from codec.quant import GRID_NBYTES, QuantGrid, dequantize

REPO = Path(__file__).resolve().parents[1]


def python_decode_ms(path: Path) -> float:
    """Python bitstream-to-parameters decode of the whole file, ms (no rendering)."""
    start = time.perf_counter()
    with ContainerReader(path) as reader:
        for e in reader.gops:
            head, coded = unpack_gop(reader.read_gop(e.index))
            grid, state, ctx, memory = head.grid, None, None, ModelMemory()
            for kind, data in coded:
                if kind == FrameKind.P:
                    assert state is not None
                    nxt = decode_inter(data, state, grid, ctx, memory)
                    ctx, state = _touched(state, nxt), nxt
                else:
                    if kind == FrameKind.I_NEW_GRID:
                        grid, data = QuantGrid.from_bytes(data[:GRID_NBYTES]), data[GRID_NBYTES:]
                    state, ctx, memory = decode_intra(data, grid), None, ModelMemory()
                dequantize(state, grid)
    return (time.perf_counter() - start) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip", type=Path)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--qualities", default="2,5")
    parser.add_argument("--iters", type=int, default=100, help="I-frame fit iterations")
    parser.add_argument("--piters", type=int, default=20, help="P-frame fit iterations")
    parser.add_argument("--work", type=Path, default=REPO / "bench/results/tmp/player")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/player_decode.json")
    args = parser.parse_args(argv)
    node = shutil.which("node")
    if node is None:
        parser.error("node is missing: run `make setup`")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for q in (int(x) for x in args.qualities.split(",")):
        gsv = args.work / f"{args.clip.stem}_q{q}_f{args.frames}_i{args.iters}_p{args.piters}.gsv"
        if not gsv.exists():
            cfg = CodecConfig.preset(
                "fast",
                q,
                gop=args.frames,
                fit__iframe_iters=args.iters,
                fit__pframe_iters=args.piters,
            )
            t0 = time.perf_counter()
            encode_video(args.clip, gsv, cfg, max_frames=args.frames)
            print(f"encoded {gsv.name} in {time.perf_counter() - t0:.0f} s", flush=True)
        run = subprocess.run(
            [node, str(REPO / "player/bench/decode-bench.mjs"), str(gsv)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        js = json.loads(run.stdout)
        py_ms = statistics.median(python_decode_ms(gsv) for _ in range(3))
        row = {
            "quality": q,
            **js,
            "python_decode_ms_per_frame": py_ms / js["frames"],
            "js_speedup_vs_python": py_ms / js["frames"] / js["decode_ms_per_frame"],
        }
        rows.append(row)
        print(
            f"q{q}: {js['frames']} frames {js['width']}x{js['height']}, {js['mean_gaussians']} "
            f"Gaussians/frame, {js['bytes']} bytes: JS {js['decode_fps']:.0f} fps "
            f"({js['decode_ms_per_frame']:.2f} ms/frame), Python {py_ms / js['frames']:.2f} ms/frame, "
            f"CPU render {np.mean(js['cpu_render_ms_per_frame']):.0f} ms/frame",
            flush=True,
        )
    args.out.write_text(
        json.dumps({"clip": str(args.clip), "machine": platform.node(), "rows": rows}, indent=1)
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
