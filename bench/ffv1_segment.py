"""A lossless FFV1 copy of a clip segment, for checkouts whose CLI cannot start mid-clip or crop.

``bench/bd_pair.py`` runs each checkout's own ``splatpack encode``, and older ones have no
``--start``; this writes frames ``start .. start + count - 1`` (optionally centre-cropped as
``bench/ladder_sweep.py`` crops) to an ``.mkv`` and checks it decodes to exactly those frames.

    .venv/bin/python bench/ffv1_segment.py ../shared/data/Megamind.avi /tmp/ab/megamind_f100_10.mkv --start 100 --frames 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ladder_sweep import load_segment  # noqa: E402

from codec.video import iter_frames  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("clip", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--frames", type=int, required=True)
    p.add_argument("--crop", default=None, help="centred crop WxH")
    args = p.parse_args(argv)
    seg = load_segment(args.clip, args.start, args.frames, args.crop)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(args.out), "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = seg.shape[2], seg.shape[1], "bgr0"
        for frame in seg:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    back = np.stack(list(iter_frames(args.out)))
    if not np.array_equal(back, seg):
        raise SystemExit(f"{args.out}: the copy does not decode to the source frames")
    print(f"{args.out}: {len(seg)} frames {seg.shape[2]}x{seg.shape[1]}, identical to the source")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
