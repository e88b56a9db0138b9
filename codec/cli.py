"""Codec command line: ``splatpack encode | decode | info | bench`` (also ``python -m codec``).

Every command is ``main(argv)`` so tests call it directly. User mistakes (bad
files, bad values) print one ``error:`` line and return exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from codec.config import CodecConfig, parse_overrides
from codec.errors import CodecError


def _config_from_args(args: argparse.Namespace) -> CodecConfig:
    overrides: dict[str, object] = {"gop": args.gop, "seed": args.seed}
    if args.init:
        overrides["fit__init"] = args.init
    if args.quant:
        overrides["quant__mode"] = args.quant
    if args.iters is not None:
        overrides["fit__iframe_iters"] = args.iters
    if args.p_iters is not None:
        overrides["fit__pframe_iters"] = args.p_iters
    overrides.update(parse_overrides(args.set or []))
    return CodecConfig.preset(args.preset, args.quality, **overrides)


def _cmd_encode(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from codec.api import encode_video

    config = _config_from_args(args)
    bar = tqdm(
        unit="frame",
        desc="encoding",
        disable=args.quiet,
        mininterval=0.1 if sys.stderr.isatty() else 10.0,
    )

    def progress(done: int, total: int | None) -> None:
        bar.total = total
        bar.n = done
        bar.update(0)  # redraws only when mininterval has passed

    try:
        summary = encode_video(
            args.input,
            args.output,
            config,
            max_frames=args.frames,
            roi=args.roi,
            progress=progress,
            device=args.device,
        )
    finally:
        bar.close()
    p_mean = (
        f"{summary.p_frame_bytes_mean:.0f} B" if summary.p_frame_bytes_mean is not None else "n/a"
    )
    print(
        f"{summary.out_path}: {summary.n_frames} frames {summary.width}x{summary.height} @ {summary.fps} fps, "
        f"{summary.n_bytes} bytes, {summary.bits_per_pixel:.4f} bpp, PSNR {summary.psnr_db:.2f} dB, "
        f"I-frame {summary.i_frame_bytes_mean:.0f} B, P-frame {p_mean}, "
        f"{summary.encode_seconds:.1f} s ({summary.encode_fps:.2f} fps)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary.__dict__, indent=2, default=str))
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    from codec.api import decode_video

    start = time.perf_counter()
    n = decode_video(args.input, args.output)
    seconds = time.perf_counter() - start
    print(
        f"{args.output}: {n} frames decoded in {seconds:.2f} s ({n / max(seconds, 1e-9):.1f} fps incl. I/O)"
    )
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from codec.container import ContainerReader

    reader = ContainerReader(Path(args.input))
    h = reader.header
    size = Path(args.input).stat().st_size
    info = {
        "file": str(args.input),
        "bytes": size,
        "width": h.width,
        "height": h.height,
        "fps": f"{h.fps_num}/{h.fps_den}",
        "frames": reader.n_frames,
        "gop": h.gop,
        "bits_per_pixel": size * 8 / max(h.width * h.height * reader.n_frames, 1),
        "codec_params": h.codec_params,
        "gops": [
            {
                "index": g.index,
                "first_frame": g.first_frame,
                "frames": g.n_frames,
                "offset": g.offset,
                "bytes": g.length,
            }
            for g in reader.gops
        ],
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(
        f"{info['file']}: {h.width}x{h.height}, {info['fps']} fps, {reader.n_frames} frames, GOP {h.gop}"
    )
    print(f"  {size} bytes, {info['bits_per_pixel']:.4f} bpp, {len(reader.gops)} GOPs")
    for g in info["gops"]:  # type: ignore[attr-defined]
        print(
            f"  GOP {g['index']:4d}: frames {g['first_frame']}..{g['first_frame'] + g['frames'] - 1}, {g['bytes']} bytes at {g['offset']}"
        )
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from codec.bench_gsv import run_full_bench

    qualities = [int(q) for q in args.qualities.split(",")]
    run_full_bench(
        Path(args.clip),
        Path(args.out) if args.out else None,
        max_frames=args.frames,
        preset=args.preset,
        qualities=qualities,
        gop=args.gop,
        classic=not args.no_classic,
        baseline=not args.no_baseline,
        iframe_iters=args.iters,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splatpack", description="2D Gaussian splat video codec")
    sub = parser.add_subparsers(dest="command", required=True)

    enc = sub.add_parser("encode", help="encode a video into a .gsv bitstream")
    enc.add_argument("input", help="any video PyAV can read")
    enc.add_argument("-o", "--output", required=True, help="output .gsv path")
    enc.add_argument("--preset", choices=["fast", "slow"], default="fast")
    enc.add_argument("--quality", type=int, default=5, help="1 (smallest) .. 10 (best)")
    enc.add_argument("--gop", type=int, default=30, help="frames per GOP (an I-frame every GOP)")
    enc.add_argument("--frames", type=int, default=None, help="encode only the first N frames")
    enc.add_argument(
        "--roi", default=None, help="'face' (detect) or a mask image (nonzero = region of interest)"
    )
    enc.add_argument("--seed", type=int, default=0)
    enc.add_argument("--init", choices=["superpixel", "random"], default=None)
    enc.add_argument("--quant", choices=["ptq", "qat"], default=None)
    enc.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any CodecConfig field (fit__x, quant__y, or top level), repeatable",
    )
    enc.add_argument(
        "--device",
        default="cpu",
        help="where the fits run: cpu, cuda, cuda:N or auto (the CPU decodes either way)",
    )
    enc.add_argument(
        "--iters", type=int, default=None, help="I-frame iteration cap (overrides the preset)"
    )
    enc.add_argument(
        "--p-iters", type=int, default=None, help="P-frame iteration cap (overrides the preset)"
    )
    enc.add_argument("--json", default=None, help="also write the summary as JSON here")
    enc.add_argument("--quiet", action="store_true", help="no progress bar")
    enc.set_defaults(func=_cmd_encode)

    dec = sub.add_parser("decode", help="decode a .gsv file to .mp4, .y4m or a directory of PNGs")
    dec.add_argument("input")
    dec.add_argument("-o", "--output", required=True)
    dec.set_defaults(func=_cmd_decode)

    inf = sub.add_parser("info", help="show a .gsv file's header and GOP index")
    inf.add_argument("input")
    inf.add_argument("--json", action="store_true")
    inf.set_defaults(func=_cmd_info)

    ben = sub.add_parser("bench", help="rate-distortion benchmark against x264, x265, SVT-AV1")
    ben.add_argument("clip")
    ben.add_argument("--frames", type=int, default=60)
    ben.add_argument(
        "--out", default=None, help="results folder (default bench/results/<clip name>)"
    )
    ben.add_argument("--preset", choices=["fast", "slow"], default="fast")
    ben.add_argument("--qualities", default="2,4,6,8")
    ben.add_argument("--gop", type=int, default=30)
    ben.add_argument(
        "--iters", type=int, default=None, help="I-frame iteration cap (overrides the preset)"
    )
    ben.add_argument("--no-classic", action="store_true")
    ben.add_argument("--no-baseline", action="store_true")
    ben.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CodecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: file not found: {exc.filename}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
