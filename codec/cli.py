"""Codec command line: ``splatpack encode | decode | info | bench`` (also ``python -m codec``).

Every command is ``main(argv)`` so tests call it directly. Habits follow ffmpeg's:

- global options (``-v``, ``-y``, ``-n``) go before or after the subcommand; ``--version``;
- ``-`` is stdin or stdout: ``encode - -o out.gsv`` reads a y4m stream, ``encode in.mp4 -o -``
  writes the ``.gsv`` to stdout, ``decode in.gsv -o -`` writes y4m to stdout and ``decode -``
  reads a ``.gsv`` from stdin (held in memory: the index is at its end). With ``-o -`` every
  message goes to stderr;
- an existing output is not replaced unless ``-y`` is given (``-n``: never; the default refuses
  too, since there is nobody to ask in a script); outputs appear complete or not at all
  (temporary file, fsync, rename), so a failed command leaves nothing behind;
- frames are chosen by ``--start``/``--frames`` or by time, ``-ss``/``-t`` (seconds);
  decode seeks through the GOP index;
- ``decode --salvage`` writes every intact GOP of a damaged file, names the damaged ones
  and exits 1; ``info`` reports damage and exits 1;
- the enhancer: ``encode --enhance`` / ``--no-enhance`` (default: the preset's, off in every
  preset today), ``decode --no-enhance`` (the raw Gaussian output), ``info`` shows each GOP's
  enhancer record; ``encode --json`` decodes the written file for PSNR, MS-SSIM (or SSIM),
  DSS and HaarPSI with and without the enhancer.

User mistakes (bad files, bad values) print one ``error:`` line naming the flag or file and what
to do, and return 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

from codec.config import PRESETS, CodecConfig, FitConfig, QuantConfig, parse_overrides
from codec.errors import BitstreamError, CodecError, DecodeLimitError

EXIT_ERROR = 2  # the command did nothing useful: bad input or arguments
EXIT_DAMAGED = 1  # the file is damaged: info found damage, decode --salvage wrote what it could
STDIO = "-"


class UsageError(CodecError):
    """A bad argument; the message names the flag and what to do."""


def version_text() -> str:
    """``splatpack <version> (GOP format N, container M)``."""
    from importlib.metadata import PackageNotFoundError, version

    from codec.bitstream import GOP_FORMAT_VERSION, OLDEST_GOP_FORMAT
    from codec.container import VERSION

    try:
        v = version("splatpack")
    except PackageNotFoundError:
        v = "unknown"
    return (
        f"splatpack {v} (writes GOP format {GOP_FORMAT_VERSION}, reads "
        f"{OLDEST_GOP_FORMAT}..{GOP_FORMAT_VERSION}; container version {VERSION})"
    )


def global_options() -> argparse.ArgumentParser:
    """Options accepted before or after the subcommand (defaults suppressed so that a value given
    in one place is not reset by the other)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("global options")
    g.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    g.add_argument(
        "-y",
        dest="overwrite",
        action="store_const",
        const="yes",
        default=argparse.SUPPRESS,
        help="overwrite output files without asking",
    )
    g.add_argument(
        "-n",
        dest="overwrite",
        action="store_const",
        const="no",
        default=argparse.SUPPRESS,
        help="never overwrite output files (stop if one exists)",
    )
    return p


# --------------------------------------------------------------------------- arguments


def _nonneg_int(flag: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{flag} {text}: not a whole number") from None
    if value < 0:
        raise UsageError(f"{flag} {text}: must be 0 or more")
    return value


def _number(flag: str) -> Callable[[str], float]:
    """An argparse type: a number, or a usage error naming ``flag``."""

    def parse(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None

    parse.__name__ = flag
    return parse


def add_target_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--target-psnr`` and ``--target-msssim`` (encode, and the service's ``submit``)."""
    tq = p.add_argument_group(
        "target quality",
        "search each GOP's quality level (between 1 and 10) for the lowest rate within 0.5 dB "
        "above the target; an unreachable target is reported, not an error",
    )
    tq.add_argument(
        "--target-psnr", type=_number("--target-psnr"), default=None, metavar="DB",
        help="mean RGB PSNR per GOP, e.g. 38",
    )  # fmt: skip
    tq.add_argument(
        "--target-msssim", type=_number("--target-msssim"), default=None, metavar="V",
        help="mean MS-SSIM per GOP, e.g. 0.97 (SSIM below 161 px; band 0.5 dB of -10 log10(1-V))",
    )  # fmt: skip
    return tq


def _seconds(flag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{flag} {text}: not a number of seconds (e.g. {flag} 2.5)") from None
    if not value >= 0 or value == float("inf"):
        raise UsageError(f"{flag} {text}: must be 0 or more seconds")
    return value


def frame_range(args: argparse.Namespace, fps: Fraction) -> tuple[int, int | None]:
    """(first frame, frame count or None) from ``--start``/``--frames`` or ``-ss``/``-t``."""
    if args.start is not None and args.start_time is not None:
        raise UsageError("--start and -ss both choose the first frame; give one of them")
    if args.frames is not None and args.duration is not None:
        raise UsageError("--frames and -t both choose how many frames; give one of them")
    start = 0
    if args.start is not None:
        start = _nonneg_int("--start", args.start)
    elif args.start_time is not None:
        start = int(_seconds("-ss", args.start_time) * fps)
    count: int | None = None
    if args.frames is not None:
        count = _nonneg_int("--frames", args.frames)
        if count == 0:
            raise UsageError("--frames 0: must be at least 1 (leave it out for every frame)")
    elif args.duration is not None:
        seconds = _seconds("-t", args.duration)
        count = max(1, round(seconds * fps))
    return start, count


def add_frame_range(p: argparse.ArgumentParser, verb: str) -> None:
    g = p.add_argument_group("frame selection")
    g.add_argument("--start", default=None, metavar="N", help=f"first frame to {verb} (0-based)")
    g.add_argument("--frames", default=None, metavar="N", help=f"{verb} at most N frames")
    g.add_argument(
        "-ss", "--start-time", dest="start_time", default=None, metavar="SECONDS",
        help="start at this time (instead of --start)",
    )  # fmt: skip
    g.add_argument(
        "-t", "--duration", dest="duration", default=None, metavar="SECONDS",
        help="this much time (instead of --frames)",
    )  # fmt: skip


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
    for arg, key in (
        ("target_psnr", "target_psnr"),
        ("target_msssim", "target_msssim"),
        ("target_trials", "target_max_trials"),
    ):
        if getattr(args, arg) is not None:
            overrides[key] = getattr(args, arg)
    sets = parse_overrides(args.set or [])
    if args.enhance is not None:
        if "enhance" in sets and sets["enhance"] != args.enhance:
            given = "--enhance" if args.enhance != "off" else "--no-enhance"
            raise UsageError(
                f"{given} and --set enhance={sets['enhance']} disagree; give one of them"
            )
        overrides["enhance"] = args.enhance
    known = _setting_names()
    for key in sets:
        if key not in known:
            close = [k for k in sorted(known) if key.split("__")[-1] in k]
            hint = f"; did you mean {', '.join(close[:3])}?" if close else ""
            raise UsageError(
                f"--set {key}=...: '{key}' is not a codec setting{hint} "
                "(top-level fields, fit__NAME or quant__NAME; see docs/SEAMS.md codec/config.py)"
            )
    overrides.update(sets)
    try:
        return CodecConfig.preset(args.preset, args.quality, **overrides)
    except CodecError as exc:
        flag = {
            "gop": "--gop",
            "quality": "--quality",
            "seed": "--seed",
            "target_psnr": "--target-psnr",
            "target_msssim": "--target-msssim",
            "target_max_trials": "--target-trials",
        }
        text = str(exc)
        for name, f in flag.items():
            if text.startswith(f"{name}="):
                raise UsageError(f"{f}: {text}") from None
        if text.startswith("target_psnr and target_msssim"):
            raise UsageError("--target-psnr and --target-msssim: give one of them") from None
        raise UsageError(f"{text} (check --quality, --gop, --iters, --p-iters and --set)") from None


def _setting_names() -> set[str]:
    names = {f.name for f in fields(CodecConfig)} - {"fit", "quant"}
    names |= {f"fit__{f.name}" for f in fields(FitConfig)}
    names |= {f"quant__{f.name}" for f in fields(QuantConfig)}
    return names


def check_overwrite(path: Path, args: argparse.Namespace, flag: str = "-o") -> None:
    """Refuse to replace an existing output unless ``-y`` was given."""
    if not (path.exists() or path.is_symlink()):
        return
    policy = getattr(args, "overwrite", "ask")
    if policy == "yes":
        if path.is_dir() and any(p.suffix.lower() != ".png" for p in path.iterdir()):
            raise UsageError(
                f"{flag} {path}: the folder holds files other than PNG frames; "
                "choose an empty or new folder (-y only replaces a folder of frames)"
            )
        return
    why = " (-n: never overwrite)" if policy == "no" else "; add -y to overwrite it"
    raise UsageError(f"{flag} {path}: exists already{why}")


def _out(args: argparse.Namespace) -> IO[str]:
    """Where messages go: stderr when stdout carries data (``-o -``)."""
    return sys.stderr if getattr(args, "output", None) == STDIO else sys.stdout


@contextlib.contextmanager
def _stdin_as_file(suffix: str) -> Iterator[Path]:
    """stdin spooled into a temporary file (removed afterwards), for readers that need a path."""
    with tempfile.TemporaryDirectory(prefix="splatpack-stdin-") as tmp:
        path = Path(tmp) / f"stdin{suffix}"
        with path.open("wb") as f:
            shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
        yield path


def _write_json_atomically(path: Path, obj: Any) -> None:
    from codec.api import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str))


# --------------------------------------------------------------------------- commands


def _cmd_encode(args: argparse.Namespace) -> int:
    out = _out(args)
    if args.output != STDIO:
        suffix = Path(args.output).suffix
        if suffix.lower() != ".gsv":
            stem = Path(args.output).with_suffix("").name or "out"
            raise UsageError(
                f"-o {args.output}: encode writes a .gsv bitstream, not {suffix or 'a folder'}; "
                f"name it {stem}.gsv (then `splatpack decode {stem}.gsv -o {args.output}` "
                "makes the video)"
            )
        check_overwrite(Path(args.output), args)
    if args.json:
        check_overwrite(Path(args.json), args, "--json")
    if args.input == STDIO:
        with _stdin_as_file(".y4m") as path:
            with path.open("rb") as f:
                magic = f.read(9)
            if magic != b"YUV4MPEG2":
                raise UsageError(
                    "encode -: stdin is not a y4m stream; pipe one, e.g. "
                    "`ffmpeg -i in.mp4 -f yuv4mpegpipe - | splatpack encode - -o out.gsv`"
                )
            return _encode(args, path, out)
    if not Path(args.input).is_file():
        raise UsageError(f"{args.input}: no such input file")
    return _encode(args, Path(args.input), out)


def _encode(args: argparse.Namespace, path: Path, out: IO[str]) -> int:
    from tqdm import tqdm

    from codec.api import encode_video
    from codec.video import probe

    config = _config_from_args(args)
    info = probe(path)
    start, count = frame_range(args, info.fps)
    if info.n_frames is not None and start >= info.n_frames:
        flag = "--start" if args.start is not None else "-ss"
        raise UsageError(
            f"{flag}: frame {start} is past the end; {args.input} has {info.n_frames} frames"
        )
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

    target: Any = sys.stdout.buffer if args.output == STDIO else Path(args.output)
    try:
        summary = encode_video(
            path,
            target,
            config,
            max_frames=count,
            start_frame=start,
            roi=args.roi,
            progress=progress,
            device=args.device,
            workers=args.workers,
            threads=args.threads,
        )
    finally:
        bar.close()
    from codec.metrics import PSNR_CAP_DB

    p_mean = (
        f"{summary.p_frame_bytes_mean:.0f} B" if summary.p_frame_bytes_mean is not None else "n/a"
    )
    psnr = (
        f"PSNR {summary.psnr_db:.2f} dB"
        if summary.psnr_db < PSNR_CAP_DB
        else "PSNR lossless (identical frames; capped at 100 dB in reports)"
    )
    print(
        f"{summary.out_path}: {summary.n_frames} frames {summary.width}x{summary.height} @ {summary.fps} fps, "
        f"{summary.n_bytes} bytes, {summary.bits_per_pixel:.4f} bpp, {psnr}, "
        f"I-frame {summary.i_frame_bytes_mean:.0f} B, P-frame {p_mean}, "
        f"{summary.encode_seconds:.1f} s ({summary.encode_fps:.2f} fps)",
        file=out,
    )
    p_speed = (
        f", P-frame {summary.p_frame_seconds_mean:.2f} s / {summary.p_frame_iters_mean:.0f} iterations"
        if summary.p_frame_seconds_mean is not None and summary.p_frame_iters_mean is not None
        else ""
    )
    print(
        f"speed: I-frame {summary.i_frame_seconds_mean:.2f} s / "
        f"{summary.i_frame_iters_mean:.0f} iterations{p_speed} (means), "
        f"{summary.workers} worker(s) x {summary.threads} thread(s)",
        file=out,
    )
    record = summary.__dict__.copy()
    n_gops = len(summary.enhancer_bytes_per_gop)
    record["enhance"] = config.enhance
    record["enhancer_bytes"] = sum(summary.enhancer_bytes_per_gop)
    record["enhancer_share_of_bytes"] = record["enhancer_bytes"] / max(summary.n_bytes, 1)
    if config.enhance != "off":
        kept = sum(1 for b in summary.enhancer_bytes_per_gop if b)
        print(
            f"enhancer ({config.enhance}): {record['enhancer_bytes']} bytes in {kept} of "
            f"{n_gops} GOPs ({100 * record['enhancer_share_of_bytes']:.2f}% of the file; a GOP "
            "keeps a record only where D + lambda R pays)",
            file=out,
        )
    if summary.target is not None:
        from codec.target import describe

        for line in describe(summary.target):
            print(line, file=out)
    if args.json:
        if args.output == STDIO:
            record["quality"] = None
            record["quality_note"] = "not measured: the .gsv went to stdout"
        else:
            record.update(_measure_written(path, Path(args.output), start, out))
        _write_json_atomically(Path(args.json), record)
    return 0


def _measure_written(source: Path, gsv: Path, start: int, out: IO[str]) -> dict[str, Any]:
    """Quality of what was written, decoded GOP by GOP against the source from frame ``start``:
    ``quality`` (the decoder's output, enhanced where a GOP carries a record) and
    ``quality_no_enhance`` (the raw Gaussian output; the same figures when no GOP has a record),
    each PSNR, MS-SSIM (``ssim_label`` says SSIM on frames too small), DSS and HaarPSI."""
    import itertools

    import numpy as np

    from codec.bitstream import unpack_gop_enhanced
    from codec.container import ContainerReader
    from codec.enhance import apply_enhancer
    from codec.gop import decode_gop
    from codec.metrics import QualityMeter
    from codec.video import iter_frames

    meter, plain_meter = QualityMeter(), QualityMeter()
    with ContainerReader(gsv) as reader:
        end = start + reader.n_frames
        frames = itertools.islice(iter_frames(source, end), start, None)
        any_record = False
        for pos, entry in enumerate(reader.gops):
            payload = reader.read_gop(pos)
            record = unpack_gop_enhanced(payload)[2]
            plain = decode_gop(payload, enhance=False)
            orig = np.stack(list(itertools.islice(frames, entry.n_frames)))
            plain_meter.add(orig, plain)
            meter.add(orig, apply_enhancer(record, plain) if record else plain)
            any_record = any_record or bool(record)
    quality = meter.summary()
    plain_quality = plain_meter.summary()
    perceptual = (
        f", DSS {quality['dss']:.4f}, HaarPSI {quality['haarpsi']:.4f}"
        if quality["dss"] is not None
        else " (DSS, HaarPSI: frames under 32 px)"
    )
    enhanced = (
        f"; without the enhancer PSNR {plain_quality['psnr_db']:.2f} dB" if any_record else ""
    )
    print(
        f"quality of the written file: PSNR {quality['psnr_db']:.2f} dB, "
        f"{quality['ssim_label']} {quality['ms_ssim']:.4f}{perceptual}{enhanced}",
        file=out,
    )
    return {"quality": quality, "quality_no_enhance": plain_quality}


def _limits(args: argparse.Namespace) -> Any:
    from codec.bitstream import DEFAULT_LIMITS, DecodeLimits

    if args.memory_budget is None:
        return DEFAULT_LIMITS
    mib = _nonneg_int("--memory-budget", args.memory_budget)
    if mib < 16:
        raise UsageError(f"--memory-budget {mib}: use at least 16 (MiB)")
    return DecodeLimits(memory_budget_bytes=mib << 20)


def _gsv_source(name: str) -> Any:
    """A path, or the bytes of stdin for ``-``."""
    if name == STDIO:
        return sys.stdin.buffer.read()
    if not Path(name).is_file():
        raise UsageError(f"{name}: no such .gsv file")
    return Path(name)


def _cmd_decode(args: argparse.Namespace) -> int:
    from codec.container import Damage, open_gsv  # no torch: a hostile file is refused first

    out = _out(args)
    if args.output != STDIO:
        suffix = Path(args.output).suffix.lower()
        if suffix not in ("", ".mp4", ".y4m"):
            raise UsageError(
                f"-o {args.output}: decode writes .mp4, .y4m, a folder of PNG frames or - (y4m "
                "to stdout); choose one of those names"
            )
        check_overwrite(Path(args.output), args)
    source = _gsv_source(args.input)
    limits = _limits(args)
    damage: list[Damage] = []
    begin = time.perf_counter()
    try:
        reader, known = open_gsv(source, limits=limits, salvage=args.salvage)
        damage.extend(known)
        h = reader.header
        start, count = frame_range(args, Fraction(h.fps_num, h.fps_den))
        if start >= reader.n_frames:
            flag = "--start" if args.start is not None else "-ss"
            raise UsageError(
                f"{flag}: frame {start} is past the end; the stream has {reader.n_frames} frames "
                f"({reader.duration_s:.2f} s)"
            )
        from codec.api import decode_video, iter_decoded, write_y4m_stream

        if args.output == STDIO:
            frames = iter_decoded(
                source, start, count, limits=limits, salvage=args.salvage, damage=damage,
                reader=reader, enhance=args.enhance,
            )  # fmt: skip
            fps = Fraction(h.fps_num, h.fps_den)
            n = write_y4m_stream(sys.stdout.buffer, frames, h.width, h.height, fps)
        else:
            n = decode_video(
                source, args.output, start_frame=start, n_frames=count, limits=limits,
                salvage=args.salvage, damage=damage, reader=reader, enhance=args.enhance,
            )  # fmt: skip
    except BitstreamError as exc:
        hint = (
            ""
            if args.salvage or isinstance(exc, DecodeLimitError)
            else " (--salvage decodes the intact GOPs of a damaged file)"
        )
        result = (
            "the y4m stream on stdout is incomplete"
            if args.output == STDIO
            else "no output was written"
        )
        raise BitstreamError(f"{args.input}: {exc}; {result}{hint}") from None
    except CodecError as exc:
        from codec.enhance.weights import EnhancerWeightsError  # torch is loaded by now

        if isinstance(exc, EnhancerWeightsError):
            raise EnhancerWeightsError(
                f"{args.input}: {exc}; --no-enhance decodes the raw Gaussian output without them"
            ) from None
        raise
    seconds = time.perf_counter() - begin
    name = "stdout" if args.output == STDIO else args.output
    print(
        f"{name}: {n} frames decoded in {seconds:.2f} s ({n / max(seconds, 1e-9):.1f} fps incl. I/O)",
        file=out,
    )
    if damage:
        for d in damage:
            print(f"damaged: {d.describe()}", file=sys.stderr)
        print(
            f"error: {args.input} is damaged; wrote the {n} frames of its intact GOPs",
            file=sys.stderr,
        )
        return EXIT_DAMAGED
    return 0


def gsv_info(source: Any) -> dict[str, Any]:
    """What ``info`` shows: header, duration, bitrate, GOPs with their frame kinds and enhancer
    records (bytes, kind, strength; GOP formats before 6 have none), the enhancer's share of the
    file, damage."""
    from codec.bitstream import FrameKind, unpack_gop_enhanced
    from codec.container import open_gsv
    from codec.enhance.model import N_MOD
    from codec.enhance.record import decode_record

    reader, known = open_gsv(source, salvage=True)
    h = reader.header
    size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
    kinds_total = {"I": 0, "P": 0, "scene-cut I": 0}
    names = {FrameKind.I: "I", FrameKind.P: "P", FrameKind.I_NEW_GRID: "scene-cut I"}
    gops: list[dict[str, Any]] = []
    damage = [d.describe() for d in known]
    for pos, g in enumerate(reader.gops):
        row: dict[str, Any] = {
            "index": g.index,
            "first_frame": g.first_frame,
            "frames": g.n_frames,
            "offset": g.offset,
            "bytes": g.length,
        }
        try:
            header, records, enhancer = unpack_gop_enhanced(reader.read_gop(pos))
            if header.n_frames != g.n_frames:
                raise BitstreamError(
                    f"GOP header says {header.n_frames} frames, the index {g.n_frames}"
                )
            rec = decode_record(enhancer, N_MOD, header.version) if enhancer else None
            row["gop_format"] = header.version
            row["kinds"] = "".join("IPS"[int(k)] for k, _ in records)
            row["enhancer_bytes"] = len(enhancer)
            if rec is not None:
                net_kind = "base" if rec.levels is None else "modulated"
                if rec.filter_levels is not None:
                    net_kind = "filter" if not rec.run_network else f"{net_kind}+filter"
                row["enhancer"] = {
                    "kind": net_kind,
                    "t": round(rec.t, 3),
                    "model_tag": f"{rec.model_tag:04x}",
                }
            for k, _ in records:
                kinds_total[names[k]] += 1
        except BitstreamError as exc:
            row["damaged"] = str(exc)
            last = g.first_frame + g.n_frames - 1
            damage.append(f"GOP {g.index} (frames {g.first_frame}..{last}): {exc}")
        gops.append(row)
    duration = reader.n_frames * h.fps_den / h.fps_num
    enhancer_bytes = sum(int(g.get("enhancer_bytes", 0)) for g in gops)
    return {
        "file": "-" if isinstance(source, bytes) else str(source),
        "bytes": size,
        "width": h.width,
        "height": h.height,
        "fps": f"{h.fps_num}/{h.fps_den}",
        "frames": reader.n_frames,
        "duration_s": duration,
        "bitrate_kbps": size * 8 / duration / 1000 if duration > 0 else 0.0,
        "gop": h.gop,
        "n_gops": len(reader.gops),
        "frame_kinds": kinds_total,
        "bits_per_pixel": size * 8 / max(h.width * h.height * reader.n_frames, 1),
        "codec_params": h.codec_params,
        # enhancer records (their bytes, not the 1-byte empty field of a GOP without one)
        "enhancer_bytes": enhancer_bytes,
        "enhancer_share_of_bytes": enhancer_bytes / size if size else 0.0,
        "gops_enhanced": sum(1 for g in gops if g.get("enhancer_bytes")),
        "gops": gops,
        "damage": damage,
    }


def _cmd_info(args: argparse.Namespace) -> int:
    try:
        info = gsv_info(_gsv_source(args.input))
    except BitstreamError as exc:
        raise BitstreamError(f"{args.input}: {exc}") from None
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        k = info["frame_kinds"]
        print(
            f"{info['file']}: {info['width']}x{info['height']}, {info['fps']} fps, "
            f"{info['frames']} frames, {info['duration_s']:.2f} s, GOP {info['gop']}"
        )
        print(
            f"  {info['bytes']} bytes, {info['bitrate_kbps']:.1f} kb/s, "
            f"{info['bits_per_pixel']:.4f} bpp, {info['n_gops']} GOPs; frames: {k['I']} I, "
            f"{k['P']} P, {k['scene-cut I']} scene-cut I"
        )
        print(
            f"  enhancer: {info['enhancer_bytes']} bytes in {info['gops_enhanced']} of "
            f"{info['n_gops']} GOPs ({100 * info['enhancer_share_of_bytes']:.2f}% of the file)"
        )
        for g in info["gops"]:
            last = g["first_frame"] + g["frames"] - 1
            what = g.get("kinds") or f"DAMAGED: {g['damaged']}"
            enh = g.get("enhancer")
            if enh:
                strength = "" if enh["kind"] == "filter" else f", t {enh['t']:.3f}"
                what += f", enhancer {g['enhancer_bytes']} B ({enh['kind']}{strength})"
            print(
                f"  GOP {g['index']:4d}: frames {g['first_frame']}..{last}, "
                f"{g['bytes']} bytes at {g['offset']}: {what}"
            )
    if info["damage"]:
        for d in info["damage"]:
            print(f"damaged: {d}", file=sys.stderr)
        print(
            f"error: {args.input} is damaged; `splatpack decode --salvage` recovers its intact GOPs",
            file=sys.stderr,
        )
        return EXIT_DAMAGED
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from codec.bench_gsv import run_full_bench

    try:
        qualities = [int(q) for q in args.qualities.split(",")]
    except ValueError:
        raise UsageError(f"--qualities {args.qualities}: use integers, e.g. 2,4,6,8") from None
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
        enhance=args.enhance,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = global_options()
    parser = argparse.ArgumentParser(
        prog="splatpack", description="2D Gaussian splat video codec", parents=[common]
    )
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True)

    enc = sub.add_parser("encode", help="encode a video into a .gsv bitstream", parents=[common])
    enc.add_argument("input", help="any video PyAV can read, or - for a y4m stream on stdin")
    enc.add_argument("-o", "--output", required=True, help="output .gsv path, or - for stdout")
    enc.add_argument(
        "--preset",
        choices=PRESETS,
        default="fast",
        help="speed ladder: ultrafast (early-stopping fits, ~3x faster, -0.5 to -0.8 dB), "
        "fast, slow (densification, quantisation-aware fine-tuning)",
    )
    enc.add_argument(
        "--workers",
        type=int,
        default=None,
        help="GOPs encoded in parallel processes (default: one per core, at most one per GOP); "
        "the bytes depend only on --threads, not on --workers",
    )
    enc.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per GOP encode (default: cores / workers)",
    )
    enc.add_argument(
        "--quality",
        type=int,
        default=5,
        help="1 (smallest) .. 10 (best); with a target, where each GOP's search starts",
    )
    tq = add_target_options(enc)
    tq.add_argument(
        "--target-trials", type=int, default=None, metavar="N",
        help="trial encodes per GOP at most (default 6, at most 12)",
    )  # fmt: skip
    enc.add_argument("--gop", type=int, default=30, help="frames per GOP (an I-frame every GOP)")
    add_frame_range(enc, "encode")
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
    enh = enc.add_mutually_exclusive_group()
    enh.add_argument(
        "--enhance",
        dest="enhance",
        action="store_const",
        const="filter",
        default=None,
        help="send the post-decoding enhancer in each GOP where D + lambda R says it pays: a "
        "per-GOP least-squares filter (GOP format 7; -1 to -4.5%% BD-rate on 30-frame GOPs). "
        "--set enhance=on also tries the restoration network, enhance=base its strength alone "
        "(neither has beaten plain decoding, codec/enhance/README.md). Default: the preset's "
        "setting, off in every preset",
    )
    enh.add_argument(
        "--no-enhance",
        dest="enhance",
        action="store_const",
        const="off",
        help="no enhancer records (the preset default today)",
    )
    enc.add_argument(
        "--json",
        default=None,
        help="also write the summary as JSON here; it decodes the written file to add PSNR, "
        "MS-SSIM (SSIM on frames under 161 px), DSS and HaarPSI, with and without the enhancer",
    )
    enc.add_argument("--quiet", action="store_true", help="no progress bar")
    enc.set_defaults(func=_cmd_encode)

    dec = sub.add_parser(
        "decode",
        help="decode a .gsv file to .mp4, .y4m, a directory of PNGs or y4m on stdout",
        parents=[common],
    )
    dec.add_argument("input", help="a .gsv file, or - to read one from stdin")
    dec.add_argument(
        "-o", "--output", required=True, help=".mp4, .y4m, a folder for PNGs, or - (y4m on stdout)"
    )
    add_frame_range(dec, "decode")
    dec.add_argument(
        "--salvage",
        action="store_true",
        help="decode every intact GOP of a damaged file, list the damaged ones, exit 1",
    )
    dec.add_argument(
        "--no-enhance",
        dest="enhance",
        action="store_false",
        help="skip GOPs' enhancer records: the raw Gaussian output (default: apply them)",
    )
    dec.add_argument(
        "--memory-budget",
        default=None,
        metavar="MIB",
        help="memory the decoder may use for one frame (default 512 MiB; raise for huge frames)",
    )
    dec.set_defaults(func=_cmd_decode)

    inf = sub.add_parser(
        "info",
        help="show a .gsv file's header, duration, bitrate and GOPs; exit 1 if it is damaged",
        parents=[common],
    )
    inf.add_argument("input", help="a .gsv file, or - for stdin")
    inf.add_argument("--json", action="store_true")
    inf.set_defaults(func=_cmd_info)

    ben = sub.add_parser(
        "bench", help="rate-distortion benchmark against x264, x265, SVT-AV1", parents=[common]
    )
    ben.add_argument("clip")
    ben.add_argument("--frames", type=int, default=60)
    ben.add_argument(
        "--out", default=None, help="results folder (default bench/results/<clip name>)"
    )
    ben.add_argument("--preset", choices=PRESETS, default="fast")
    ben.add_argument("--qualities", default="2,4,6,8")
    ben.add_argument("--gop", type=int, default=30)
    ben.add_argument(
        "--iters", type=int, default=None, help="I-frame iteration cap (overrides the preset)"
    )
    ben.add_argument("--no-classic", action="store_true")
    ben.add_argument("--no-baseline", action="store_true")
    ben.add_argument(
        "--enhance",
        action="store_true",
        help="encode with the per-GOP enhancer filter and report splatpack+enhance beside plain "
        "splatpack (the same files without the records), with its BD-rate against plain",
    )
    ben.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except CodecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except FileNotFoundError as exc:
        name = exc.filename or getattr(args, "input", None) or "a file"
        print(f"error: {name}: no such file or folder", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
