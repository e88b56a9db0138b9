"""Would predicting P-frame position deltas from optical flow save bits? (issue 8, item 3)

The P-frame coder already predicts each changed Gaussian's position delta from its neighbours
(``codec/entropy.py``: the previous changed row, the other axis, and the median of the three
spatially nearest earlier updates, whichever codes cheapest per channel). This measures what a
flow-based predictor would add on top, as one more candidate for the x and y delta channels
(``delta - round(flow at the Gaussian / position step)``), in two versions:

- **oracle**: the flow the encoder's motion warm start computes, from the decoded previous
  frame to the *source* of the new frame. The decoder does not have it (sending it would cost
  bits), so this is an upper bound on any flow predictor;
- **extrapolated**: the flow between the two previous *decoded* frames (t-2 -> t-1), which a
  decoder could compute itself, assuming constant motion (from the third frame of a GOP).

Each P-frame record is coded three times from the same state (the stream written is the
normal one; the trial codings use copies of the GOP's model memory), so the encode itself is
unchanged and the byte counts compare like for like. Prints and writes JSON.

    OMP_NUM_THREADS=2 .venv/bin/python bench/motion_delta.py ../shared/data/carphone_pristine.mp4 \\
        --frames 30 --quality 4 --out bench/results/motion_delta_carphone.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import codec.entropy as entropy  # noqa: E402
import codec.fit as fit  # noqa: E402
import codec.gop as gop  # noqa: E402
from codec.config import CodecConfig  # noqa: E402
from codec.video import read_frames  # noqa: E402


def _predicted_levels(flow: np.ndarray, xy: np.ndarray, grid: Any) -> np.ndarray:
    """int64 [K, 2]: the flow (float32 [H, W, 2], px) under each position (int64 [K, 2] fine-grid
    levels), in position levels."""
    h, w, _ = flow.shape
    px = grid.xy_lo + xy.astype(np.float64) * grid.xy_step
    ix = np.clip(np.floor(px[:, 0]).astype(np.int64), 0, w - 1)
    iy = np.clip(np.floor(px[:, 1]).astype(np.int64), 0, h - 1)
    return np.round(flow[iy, ix] / grid.xy_step).astype(np.int64)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("clip", type=Path)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--quality", type=int, default=4)
    p.add_argument("--preset", default="fast")
    p.add_argument("--crop", default=None, help="centred crop WxH")
    p.add_argument("--out", type=Path, default=Path("bench/results/motion_delta.json"))
    args = p.parse_args(argv)
    frames = read_frames(args.clip, args.start, args.frames)
    if args.crop:
        cw, ch = (int(v) for v in args.crop.split("x"))
        y0, x0 = (frames.shape[1] - ch) // 2, (frames.shape[2] - cw) // 2
        frames = np.ascontiguousarray(frames[:, y0 : y0 + ch, x0 : x0 + cw])
    cfg = CodecConfig.preset(args.preset, args.quality, gop=len(frames), seed=0)
    if not cfg.fit.pframe_motion:
        raise SystemExit(f"preset {args.preset} has no motion warm start: nothing to measure")

    flows: dict[str, Any] = {"oracle": None, "extrapolated": None, "prev_ref": None}
    orig_flow = fit.dense_flow

    def recording_flow(ref: Any, frame: Any) -> Any:
        out = orig_flow(ref, frame)
        flows["oracle"] = out.cpu().numpy()
        prev = flows["prev_ref"]
        flows["extrapolated"] = None if prev is None else orig_flow(prev, ref).cpu().numpy()
        flows["prev_ref"] = ref.clone()
        return out

    pred: dict[str, np.ndarray | None] = {"levels": None}
    orig_cands = entropy._inter_cands

    def cands(src: Any, near3: Any, refs: Any, c: int, med: bool = True) -> list[Any]:
        out = orig_cands(src, near3, refs, c, med)
        if pred["levels"] is not None and c in (0, 1):
            out.append(entropy._Cand("cross", ref=pred["levels"][:, c]))
        return out

    totals = {"base": 0, "oracle": 0, "extrapolated": 0, "frames_with_extrapolation": 0}
    per_frame: list[dict[str, int]] = []
    orig_inter = gop.encode_inter

    def inter(
        prev: Any, idx: Any, changed: Any, added: Any, grid: Any, ctx: Any, memory: Any
    ) -> bytes:
        spare = copy.deepcopy(memory)
        data = orig_inter(prev, idx, changed, added, grid, ctx, memory)
        row: dict[str, int] = {"base": len(data)}
        xy = entropy._rows(prev)[np.asarray(idx, dtype=np.int64), :2]
        for name in ("oracle", "extrapolated"):
            flow = flows[name]
            if flow is None or not len(xy):
                row[name] = len(data)
                continue
            size = 1 << int(entropy._bits_per_column(grid)[0])
            pred["levels"] = _predicted_levels(flow, xy, grid) % size
            try:
                row[name] = len(
                    orig_inter(prev, idx, changed, added, grid, ctx, copy.deepcopy(spare))
                )
            finally:
                pred["levels"] = None
        if flows["extrapolated"] is not None:
            totals["frames_with_extrapolation"] += 1
        for k in ("base", "oracle", "extrapolated"):
            totals[k] += row[k]
        per_frame.append(row)
        return data

    fit.dense_flow = recording_flow  # type: ignore[assignment]
    entropy._inter_cands = cands  # type: ignore[assignment]
    gop.encode_inter = inter  # type: ignore[assignment]
    try:
        res = gop.encode_gop_report(frames, cfg)
    finally:
        fit.dense_flow, entropy._inter_cands, gop.encode_inter = orig_flow, orig_cands, orig_inter
    p_psnr = float(np.mean([s.psnr_db for s in res.frames[1:]])) if len(res.frames) > 1 else None
    summary = {
        "p_frames": len(per_frame),
        "p_bytes": totals["base"],
        "oracle_bytes": totals["oracle"],
        "extrapolated_bytes": totals["extrapolated"],
        "oracle_saving_pct": 100.0 * (1 - totals["oracle"] / max(totals["base"], 1)),
        "extrapolated_saving_pct": 100.0 * (1 - totals["extrapolated"] / max(totals["base"], 1)),
        "frames_with_extrapolation": totals["frames_with_extrapolation"],
        "p_frame_mean_psnr_db": p_psnr,
    }
    print(
        f"{args.clip.name} q{args.quality} {frames.shape[2]}x{frames.shape[1]}, {len(per_frame)} P-frames:"
        f" {totals['base']} B as coded; with an oracle flow predictor {totals['oracle']} B"
        f" ({summary['oracle_saving_pct']:+.2f}% saved); extrapolated decoder-side flow"
        f" {totals['extrapolated']} B ({summary['extrapolated_saving_pct']:+.2f}% saved)"
    )
    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "summary": summary,
        "per_frame": per_frame,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
