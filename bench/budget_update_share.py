"""Does the GOP-aware budget's update model match what the P-frames do? (issue 14)

``codec.init.block_persistence`` says how many frames each 16x16 block's content lives for; the
budget's update cost charges a Gaussian one update per frame its block has changed. This prints
that model's share of changed frames (mean over blocks of ``(T - persistence) / (T - 1)``, at
several tau) beside what one `fast` encode's P-frames actually do: the mean share of the
Gaussians each P-frame updates, the Gaussians it adds, its bytes and the bits per update.

    OMP_NUM_THREADS=1 .venv/bin/python bench/budget_update_share.py ../shared/data/box.mp4 --frames 20 --crop 320x240 --quality 7
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ladder_sweep import load_segment  # noqa: E402

from codec.config import CodecConfig  # noqa: E402
from codec.gop import encode_gop_report  # noqa: E402
from codec.init import block_persistence  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("clip", type=Path)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--crop", default=None, help="centred crop WxH")
    p.add_argument("--quality", type=int, default=7)
    args = p.parse_args(argv)
    frames = load_segment(args.clip, args.start, args.frames, args.crop)
    t = len(frames)
    for tau in (16.0, 64.0, 256.0):
        share = float(np.mean((t - block_persistence(frames, tau)) / (t - 1)))
        print(f"tau {tau:g}: the model's changed-frame share {share:.3f}")
    res = encode_gop_report(frames, CodecConfig.preset("fast", args.quality, gop=t, seed=0))
    p_frames = res.frames[1:]
    updated = np.mean([f.n_updated / max(f.n_gaussians, 1) for f in p_frames])
    added = np.mean([f.n_added for f in p_frames])
    p_bytes = np.mean([f.n_bytes for f in p_frames])
    per_update = 8 * p_bytes / max(float(np.mean([f.n_updated for f in p_frames])), 1.0)
    print(
        f"actual: I-frame {res.frames[0].n_gaussians} Gaussians; per P-frame: updated share"
        f" {updated:.3f}, {added:.1f} added, {p_bytes:.0f} B, {per_update:.1f} bits per update"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
