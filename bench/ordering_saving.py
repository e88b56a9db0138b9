"""Measured saving of coding an I-frame's Gaussians as a set instead of a sequence (bits-back).

The intra coder (``codec.entropy.encode_intra``) sends an I-frame's Gaussians as a
Morton-sorted *set*: the positions travel as gaps between consecutive Morton codes, which
leaves out the ``log2(N!)`` bits of ordering freedom that bits-back coding would recover
(``codec.entropy.ordering_freedom_bits``). This script measures what that saves on real
frames: it fits and quantises I-frames exactly as the codec does
(``codec.gop._code_iframe``: init, fit, grid, quantisation, canonical order) and codes the
very same quantised Gaussians three ways with the codec's own range coder and per-stream
model choice (``_Writer``, ``_put``, ``_Cand`` of ``codec.entropy``):

* **set**: the real I-frame record, ``encode_intra(q, grid)`` (the codec's choice);
* **sequence**: the rows in a random (seeded) order, i.e. an order that carries
  information the decoder must reproduce. ``x`` and ``y`` are two streams in that order
  (``x``: the value; ``y``: the value or its difference to ``x``; each with the cheapest
  model, as for every stream of the codec). The attributes are then coded exactly as
  ``_put_set`` codes them, in Morton order with the nearest-neighbour and cross-channel
  predictors: the decoder, holding all positions, sorts them itself (stably, so rows at the
  same position keep their sequence order) and maps the attributes back. The record is
  decodable (:func:`decode_sequence_record`) and differs from the set record only in how
  positions are sent, so *sequence - set* is the measured price of the order, plus
  whatever the two position models capture differently (Morton-gap histogram vs the
  marginal histograms of x and y: the gaps see the 2-D density, the marginals do not);
* **naive sequence** (for reference): every stream in the random order, the attributes
  with the same predictor lists but the neighbour found among the 16 rows before it in
  that random order, so it also loses the spatial prediction the sorted order gives.

Both baselines are real records (varint count, range-coded body, the same zero padding
rule), measured in bytes; nothing is estimated except the theoretical ``log2(N!)``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/ordering_saving.py ../shared/data/carphone_pristine.mp4 --qualities 2,4,6
    OMP_NUM_THREADS=1 .venv/bin/python bench/ordering_saving.py ../shared/data/Megamind.avi --qualities 4 --start 150 --append

Prints a markdown table and writes JSON (default ``bench/results/ordering_saving.json``):
``runs``, one per command (the command line, machine, per-frame results), and the table
over all of them; ``--append`` adds a run to the file instead of replacing it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from codec.bitstream import read_varint, write_varint  # noqa: E402
from codec.config import CodecConfig  # noqa: E402
from codec.entropy import (  # noqa: E402
    _INTRA_ATTRS,
    _Cand,
    _cands,
    _get,
    _intra_bits,
    _morton,
    _near_src,
    _padded,
    _put,
    _Reader,
    _rows,
    _to_q,
    _Writer,
    encode_intra,
    ordering_freedom_bits,
)
from codec.gop import _code_iframe, resolve_device, to_float, to_u8  # noqa: E402
from codec.metrics import psnr_db  # noqa: E402
from codec.quant import QuantGrid, dequantize  # noqa: E402
from codec.render import get_backend  # noqa: E402
from codec.video import read_frames  # noqa: E402

DEFAULT_OUT = Path("bench/results/ordering_saving.json")


def _xy_cands(c: int, x: np.ndarray) -> list[_Cand]:
    """Predictors of a position channel sent as a sequence: x its value, y also y - x."""
    return [_Cand("id")] if c == 0 else [_Cand("id"), _Cand("cross", x)]


def _attr_order(rows: np.ndarray) -> np.ndarray:
    """Order in which the sequence coder sends attributes: Morton order of the positions,
    ties in sequence order (a function of the decoded positions alone)."""
    return np.argsort(_morton(rows[:, :2]), kind="stable")


def _put_attrs(w: _Writer, rows: np.ndarray, bits: np.ndarray) -> None:
    """The attribute streams of ``rows`` (int64 [N, 8], I-frame levels >> the grid's intra
    shifts, ``bits`` per channel) in their given order, as ``_put_set`` sends them: the
    neighbour predictor looks among the 16 rows before each row."""
    src = _near_src(rows[:, :2])
    done: dict[int, np.ndarray] = {}
    for c in _INTRA_ATTRS:
        _put(w, rows[:, c], int(bits[c]), _cands("id", src, done, c))
        done[c] = rows[:, c]


def _get_attrs(r: _Reader, rows: np.ndarray, bits: np.ndarray) -> None:
    """Inverse of :func:`_put_attrs` into ``rows`` (positions already filled in)."""
    src = _near_src(rows[:, :2])
    done: dict[int, np.ndarray] = {}
    for c in _INTRA_ATTRS:
        rows[:, c] = _get(r, len(rows), int(bits[c]), _cands("id", src, done, c))
        done[c] = rows[:, c]


def sequence_record(rows: np.ndarray, grid: QuantGrid, *, naive: bool = False) -> bytes:
    """A decodable record of ``rows`` (int64 [N, 8], any order) that keeps their order.

    Like ``_put_set``, it codes the I-frame levels (``rows >> grid.intra_shifts()``) in the
    I-frame bit depths. Positions are two streams (x, y) in the given order. Attributes follow
    in Morton order (``naive=False``, see :func:`_attr_order`) or in the given order
    (``naive=True``).
    """
    n = len(rows)
    if not n:
        return write_varint(0)
    rows = rows >> grid.intra_shifts()
    bits = _intra_bits(grid)
    w = _Writer()
    for c in (0, 1):
        _put(w, rows[:, c], int(bits[c]), _xy_cands(c, rows[:, 0]))
    _put_attrs(w, rows if naive else rows[_attr_order(rows)], bits)
    return write_varint(n) + _padded(w.finish(), n)


def decode_sequence_record(data: bytes, grid: QuantGrid, *, naive: bool = False) -> np.ndarray:
    """Inverse of :func:`sequence_record`: the rows (int64 [N, 8]) in their coded order."""
    n, pos = read_varint(data, 0, "sequence record")
    rows = np.zeros((n, 8), dtype=np.int64)
    if not n:
        return rows
    r = _Reader(data[pos:], "sequence record")
    bits = _intra_bits(grid)
    for c in (0, 1):
        rows[:, c] = _get(r, n, int(bits[c]), _xy_cands(c, rows[:, 0]))
    if naive:
        _get_attrs(r, rows, bits)
    else:
        order = _attr_order(rows)
        part = rows[order]
        _get_attrs(r, part, bits)
        rows[order] = part
    r.finish()
    return rows << grid.intra_shifts()


def position_bytes(rows: np.ndarray, grid: QuantGrid, *, as_set: bool) -> int:
    """Bytes of the position streams alone: Morton gaps of the sorted rows (``as_set``, as in
    ``_put_set``) or x and y in the given order (as in :func:`sequence_record`)."""
    rows = rows >> grid.intra_shifts()
    bits = _intra_bits(grid)
    w = _Writer()
    if as_set:
        morton = np.sort(_morton(rows[:, :2]))
        _put(w, np.diff(morton, prepend=0), 2 * int(bits[0]), [_Cand("id")])
    else:
        for c in (0, 1):
            _put(w, rows[:, c], int(bits[c]), _xy_cands(c, rows[:, 0]))
    return len(w.finish())


def distinct_ordering_bits(rows: np.ndarray) -> float:
    """log2(N! / prod m!) over the multiplicities m of identical rows: the information in
    the order of the rows (equal rows are interchangeable)."""
    _, counts = np.unique(rows, axis=0, return_counts=True)
    return ordering_freedom_bits(len(rows)) - sum(ordering_freedom_bits(int(m)) for m in counts)


def measure(rows: np.ndarray, grid: QuantGrid, seed: int = 0) -> dict[str, Any]:
    """Set-coded vs sequence-coded bytes of ``rows`` (int64 [N, 8], canonical order), the
    sequence in a random order drawn with ``seed``. Checks that both sequence records decode
    to the shuffled rows (they are real codes, not estimates)."""
    n = len(rows)
    shuffled = rows[np.random.default_rng(seed).permutation(n)]
    set_b = len(encode_intra(_to_q(rows), grid))
    sizes: dict[bool, int] = {}
    for naive in (False, True):
        record = sequence_record(shuffled, grid, naive=naive)
        if not np.array_equal(decode_sequence_record(record, grid, naive=naive), shuffled):
            raise AssertionError(f"the sequence record (naive={naive}) does not decode")
        sizes[naive] = len(record)
    seq_b, naive_b = sizes[False], sizes[True]
    log2_fact = ordering_freedom_bits(n)
    saving_bits = 8 * (seq_b - set_b)
    return {
        "n_gaussians": n,
        "n_distinct_positions": len(np.unique(rows[:, :2], axis=0)),
        "xy_bits_intra": int(_intra_bits(grid)[0]),
        "set_bytes": set_b,
        "sequence_bytes": seq_b,
        "naive_sequence_bytes": naive_b,
        "position_bytes_set": position_bytes(rows, grid, as_set=True),
        "position_bytes_sequence": position_bytes(shuffled, grid, as_set=False),
        "saving_bits": saving_bits,
        "saving_pct_of_iframe": 100.0 * (seq_b - set_b) / set_b,
        "naive_saving_bits": 8 * (naive_b - set_b),
        "log2_n_factorial_bits": log2_fact,
        "log2_orderings_distinct_rows_bits": distinct_ordering_bits(rows),
        "saving_over_log2_n_factorial": saving_bits / log2_fact if log2_fact else math.nan,
        "permutation_seed": seed,
    }


def _fit_iframe(
    frame_u8: np.ndarray, cfg: CodecConfig, device: torch.device
) -> tuple[np.ndarray, QuantGrid, bytes, float, int, float]:
    """(rows in canonical order, grid, the codec's I-frame record, PSNR dB, iters, seconds)
    for one frame, exactly as ``encode_gop_report`` codes a GOP's first frame."""
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    frame = to_float(frame_u8)
    q, grid, data, iters = _code_iframe(frame, cfg, get_backend(cfg.backend), None, gen, device)
    seconds = time.perf_counter() - start
    h, w, _ = frame_u8.shape
    recon = to_u8(get_backend("torch").render_nograd(dequantize(q, grid), h, w))
    return _rows(q), grid, data, psnr_db(frame_u8, recon), iters, seconds


def _table(results: list[dict[str, Any]]) -> str:
    head = (
        "| clip | frame | q | N | set-coded I-frame B | sequence B | saving bits | saving % of I-frame "
        "| log2(N!) bits | saving / log2(N!) | positions set / sequence B | naive sequence B |"
    )
    lines = [head, "|" + " --- |" * 12]
    for r in results:
        lines.append(
            f"| {r['clip']} | {r['frame']} | {r['quality']} | {r['n_gaussians']} | {r['set_bytes']} "
            f"| {r['sequence_bytes']} | {r['saving_bits']} | {r['saving_pct_of_iframe']:.1f}% "
            f"| {r['log2_n_factorial_bits']:.0f} | {r['saving_over_log2_n_factorial']:.2f} "
            f"| {r['position_bytes_set']} / {r['position_bytes_sequence']} "
            f"| {r['naive_sequence_bytes']} |"
        )
    return "\n".join(lines)


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ('' where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _command_line(argv: list[str] | None) -> str:
    """The exact command that ran (with OMP_NUM_THREADS when set), or the arguments given."""
    if argv is not None:
        return shlex.join(["bench/ordering_saving.py", *argv])
    omp = os.environ.get("OMP_NUM_THREADS")
    return (f"OMP_NUM_THREADS={omp} " if omp else "") + shlex.join(sys.orig_argv)


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(
        "clip",
        type=Path,
        nargs="?",
        default=Path("../shared/data/carphone_pristine.mp4"),
    )
    parser.add_argument("--qualities", default="2,4,6", help="comma-separated, 1..10")
    parser.add_argument("--frames", type=int, default=1, help="I-frames to fit, from --start")
    parser.add_argument("--start", type=int, default=0, help="first frame (0-based)")
    parser.add_argument(
        "--iters",
        type=int,
        default=None,
        help="I-frame fit iterations (default: the fast preset's); a documented shortcut",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random row order")
    parser.add_argument("--device", default="cpu", help="where the fits run: cpu, cuda, auto")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--append", action="store_true", help="add this run to the runs already in --out"
    )
    args = parser.parse_args(argv)

    qualities = [int(s) for s in args.qualities.split(",") if s.strip()]
    device = resolve_device(args.device)
    frames = read_frames(args.clip, args.start, args.frames)
    results: list[dict[str, Any]] = []
    for offset, frame_u8 in enumerate(frames):
        for quality in qualities:
            overrides = {} if args.iters is None else {"fit__iframe_iters": args.iters}
            cfg = CodecConfig.preset("fast", quality, **overrides)
            rows, grid, data, psnr, iters, seconds = _fit_iframe(frame_u8, cfg, device)
            m = measure(rows, grid, seed=args.seed)
            if m["set_bytes"] != len(data):
                raise AssertionError("encode_intra differs from the codec's I-frame record")
            result = {
                "clip": args.clip.name,
                "frame": args.start + offset,
                "quality": quality,
                "iframe_iters": cfg.fit.iframe_iters,
                "fit_iters_run": iters,
                "psnr_db": psnr,
                "fit_seconds": seconds,
                **m,
            }
            results.append(result)
            print(
                f"{args.clip.name} frame {result['frame']} q{quality}: N={m['n_gaussians']} "
                f"set {m['set_bytes']} B, sequence {m['sequence_bytes']} B, "
                f"saving {m['saving_bits']} bits (log2 N! = {m['log2_n_factorial_bits']:.0f}), "
                f"PSNR {psnr:.2f} dB, fit {seconds:.0f} s",
                flush=True,
            )
    table = _table(results)
    print()
    print(table)
    run = {
        "command": _command_line(argv),
        "clip": str(args.clip),
        "qualities": qualities,
        "start": args.start,
        "frames": len(frames),
        "iters_override": args.iters,
        "device": str(device),
        "machine": {
            "processor": platform.processor(),
            "cpu_model": _cpu_model(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average": list(os.getloadavg()),
        },
        "results": results,
        "table_markdown": table,
    }
    runs: list[Any] = []
    if args.append and args.out.exists():
        runs = list(json.loads(args.out.read_text()).get("runs", []))
    runs.append(run)
    all_results = [r for one in runs for r in one["results"]]
    report = {"runs": runs, "table_markdown": _table(all_results)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
