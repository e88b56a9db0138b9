"""Conformance fixtures for the JavaScript decoder (player/): small ``.gsv`` files written by this
package's encoder, with the Python decoder's Gaussian parameters and frames beside them.

Each fixture ``NAME`` is four files in ``tests/player/fixtures/``:

- ``NAME.gsv``: the stream;
- ``NAME.params.bin``: per frame ``u32 N`` then ``N x 8`` float32 (x y l11 l21 l22 r g b), the
  dequantised Gaussians of ``codec.quant.dequantize`` (the JS decoder must match them bit for bit);
- ``NAME.frames.bin``: the frames of ``codec.gop.decode_gop``, uint8 RGB, frame after frame;
- ``NAME.json``: size, frame count and which stream modes, predictors, index modes and frame kinds
  the Python decoder met while decoding it (the coverage the tests assert).

``synthetic`` (legacy render, GOP flags 0) and ``synthetic_canonical`` (RENDER_CANONICAL):
hand-made levels coded with ``codec.entropy``'s own encoder, every symbol stream's
(predictor, model) choice forced round-robin through the options the format has (the encoder
would only ever pick the cheapest), so every mode 0..17, every predictor, the three ways to send
changed rows, I, P, scene-cut I (kind 2), skipped frames (K = M = 0), an empty I-frame, 32-bit
Morton codes, refined grids, odd frame sizes and chunks out of GOP order all occur.
``encoded_canonical``: a real encode (fitting, RD choices, a detected scene cut) of a tiny
synthetic clip by today's encoder; ``encoded``: the same by the encoder before the canonical render
existed, frozen (a format's fixture stays: files keep playing).

Regenerate with ``.venv/bin/python -m tests.player.fixtures`` (the tests check that the committed
expectations are still what the Python decoder produces).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import codec.entropy as ent
from codec.bitstream import FrameKind, GopHeader, pack_gop
from codec.config import CodecConfig
from codec.container import ContainerReader, ContainerWriter, StreamHeader
from codec.gop import RENDER_CANONICAL, decode_gop, encode_gop
from codec.quant import QGaussians, QuantGrid, dequantize, grid_nbytes

FIXTURE_DIR = Path(__file__).parent / "fixtures"


# --------------------------------------------------------------------------- forced stream choices


class _Forcer:
    """Replaces ``codec.entropy._plan``: the cheapest plan's cost (so the encoder's other choices
    stay as they are) but a predictor and model taken round-robin, preferring ones not used yet."""

    def __init__(self) -> None:
        self.used: set[int] = set()
        self.count = 0
        self._orig = ent._plan

    def __call__(
        self, v: np.ndarray, kbits: int, cands: list[Any], memo: Any = None
    ) -> Any:  # ent._Plan
        best = self._orig(v, kbits, cands, memo)
        self.count += 1
        ci = self.count % len(cands)
        r = ent._forward(v, cands[ci], kbits)
        options: list[Any] = []
        if not r.any():
            options.append(ent._Plan(best.cost, ci, ent._MODE_ZERO, r, None))
        prior = memo[0].get(memo[1], kbits) if memo is not None else None
        if prior is not None and math.isfinite(ent._reuse_cost(r, kbits, prior)):
            options.append(ent._Plan(best.cost, ci, ent._MODE_REUSE, r, prior[1], prior[0]))
        options.append(ent._Plan(best.cost, ci, 0, r, None))
        for j in range(1, min(kbits, ent._MAX_J) + 1):
            h = np.bincount(r >> (kbits - j), minlength=1 << j)
            options.append(ent._Plan(best.cost, ci, j, r, ent._levels(h), j))
        for m in range(3):
            mode = ent._MODE_LOG0 + m
            cls, _, _ = ent._split(r, kbits, mode)
            h = np.bincount(cls, minlength=ent._log_classes(kbits, m))
            options.append(ent._Plan(best.cost, ci, mode, r, ent._levels(h), mode))
        fresh = [p for p in options if p.mode not in self.used]
        pick = fresh[0] if fresh else options[self.count % len(options)]
        self.used.add(pick.mode)
        return pick


@contextlib.contextmanager
def forced_plans() -> Iterator[_Forcer]:
    forcer = _Forcer()
    ent._plan = forcer  # type: ignore[assignment]
    try:
        yield forcer
    finally:
        ent._plan = forcer._orig  # type: ignore[assignment]


# --------------------------------------------------------------------------- decoder coverage


@contextlib.contextmanager
def coverage() -> Iterator[dict[str, set[Any]]]:
    """Records stream modes (U(18) symbols), predictor kinds and P-frame index modes decoded."""
    seen: dict[str, set[Any]] = {"modes": set(), "predictors": set(), "index": set()}
    orig_uniform, orig_inverse, orig_get = ent._Reader.uniform, ent._inverse, ent._get
    orig_ctx = ent._get_ctx_bitmap

    def uniform(self: Any, n: int, size: int) -> np.ndarray:
        out = orig_uniform(self, n, size)
        if size == ent._N_MODES:
            seen["modes"].update(int(x) for x in out)
        return out

    def inverse(r: np.ndarray, c: Any, kbits: int) -> np.ndarray:
        seen["predictors"].add(c.kind)
        return orig_inverse(r, c, kbits)

    def get(r: Any, n: int, kbits: int, cands: list[Any], memo: Any = None) -> np.ndarray:
        if memo is not None and memo[1] in ("gaps", "runs.z"):
            seen["index"].add(memo[1].split(".")[0])
        return orig_get(r, n, kbits, cands, memo)

    def ctx_bitmap(*args: Any) -> np.ndarray:
        seen["index"].add("context")
        return orig_ctx(*args)

    ent._Reader.uniform = uniform  # type: ignore[method-assign]
    ent._inverse, ent._get, ent._get_ctx_bitmap = inverse, get, ctx_bitmap
    try:
        yield seen
    finally:
        ent._Reader.uniform = orig_uniform  # type: ignore[method-assign]
        ent._inverse, ent._get, ent._get_ctx_bitmap = orig_inverse, orig_get, orig_ctx


# --------------------------------------------------------------------------- synthetic streams


def _grid(xy_bits: int, xr: int, ar: int, seed: int) -> QuantGrid:
    rng = np.random.default_rng(seed)
    f32 = lambda x: float(np.float32(x))  # noqa: E731
    bits = 6 + ar
    return QuantGrid(
        xy_bits=xy_bits,
        chol_bits=bits,
        rgb_bits=bits,
        xy_lo=f32(-4.0),
        xy_step=f32(48.0 / 2**xy_bits),
        chol_lo=(f32(0.3), f32(-1.5), f32(0.25 + rng.random())),
        chol_step=(f32(1.04), f32(3.0 / 2**bits), f32(1.05)),
        rgb_lo=(f32(-0.1), f32(0.0), f32(-0.05)),
        rgb_step=(f32(1.2 / 2**bits), f32(1.0 / 2**bits), f32(1.1 / 2**bits)),
        xy_refine=xr,
        attr_refine=ar,
    )


def _random_rows(rng: np.random.Generator, n: int, grid: QuantGrid) -> np.ndarray:
    """int64 [n, 8] on the grid's I-frame levels, in canonical (Morton) order."""
    shifts = grid.intra_shifts()
    bits = np.array([grid.xy_bits] * 2 + [grid.chol_bits] * 3 + [grid.rgb_bits] * 3)
    top = 1 << (bits - shifts)
    # clustered positions and smooth attributes, so predictors have something to predict
    centres = rng.integers(0, top[0], size=(8, 2))
    xy = centres[rng.integers(0, 8, n)] + rng.integers(-6, 7, size=(n, 2))
    rows = np.zeros((n, 8), dtype=np.int64)
    rows[:, :2] = np.clip(xy, 0, top[0] - 1)
    base = rng.integers(0, top[2:], size=8 - 2)
    rows[:, 2:] = np.clip(base + rng.integers(-3, 4, size=(n, 6)), 0, top[2:] - 1)
    rows[:, 5] = np.clip(rows[:, 6] + rng.integers(-1, 2, n), 0, top[5] - 1)  # r near g
    rows <<= shifts
    q = QGaussians.from_rows(torch.from_numpy(rows))
    return q.index(ent.canonical_order(q)).rows().numpy().astype(np.int64)


def _q(rows: np.ndarray) -> QGaussians:
    return QGaussians.from_rows(torch.from_numpy(rows.astype(np.int64)))


def _synthetic_gop(seed: int, height: int, width: int, flags: int) -> bytes:
    """One GOP of 12 frames going through every record kind and changed-row coding."""
    rng = np.random.default_rng(seed)
    grid = _grid(xy_bits=10, xr=1, ar=1, seed=seed)
    bits = np.array([grid.xy_bits] * 2 + [grid.chol_bits] * 3 + [grid.rgb_bits] * 3)
    frames: list[tuple[FrameKind, bytes]] = []
    state = _random_rows(rng, 300, grid)
    frames.append((FrameKind.I, ent.encode_intra(_q(state), grid)))
    memory = ent.ModelMemory()
    ctx: np.ndarray | None = None

    def p_frame(idx: np.ndarray, deltas: np.ndarray, n_add: int, g: QuantGrid) -> None:
        nonlocal state, ctx
        idx = np.sort(idx)
        new = state[idx].copy()
        new = (new + deltas) % (1 << bits)
        added = _random_rows(rng, n_add, g) if n_add else np.zeros((0, 8), dtype=np.int64)
        data = ent.encode_inter(
            _q(state), torch.from_numpy(idx), _q(new), _q(added), g, ctx, memory
        )
        nxt = state.copy()
        nxt[idx] = new
        nxt = np.concatenate([nxt, added])
        touched = np.ones(len(nxt), dtype=bool)
        touched[: len(state)] = (nxt[: len(state)] != state).any(axis=1)
        state, ctx = nxt, touched
        frames.append((FrameKind.P, data))

    def small(k: int) -> np.ndarray:
        d = rng.integers(-2, 3, size=(k, 8))
        d[:, :2] = rng.integers(-5, 6, size=(k, 2))
        return d

    n = len(state)
    p_frame(rng.choice(n, 12, replace=False), small(12), 0, grid)  # scattered rows
    p_frame(np.arange(40, 140), small(100), 5, grid)  # a long run of rows, plus additions
    p_frame(np.flatnonzero(ctx)[:60], small(60), 0, grid)  # the rows touched last frame
    p_frame(np.zeros(0, dtype=np.int64), np.zeros((0, 8), dtype=np.int64), 0, grid)  # skipped
    p_frame(np.arange(0, len(state), 3), small(len(range(0, len(state), 3))), 20, grid)
    p_frame(np.array([7]), np.zeros((1, 8), dtype=np.int64), 0, grid)  # a no-op update
    # scene cut: a new grid and a fresh I-frame; then P-frames on the new grid
    grid = _grid(xy_bits=12, xr=2, ar=0, seed=seed + 1)
    bits = np.array([grid.xy_bits] * 2 + [grid.chol_bits] * 3 + [grid.rgb_bits] * 3)
    state, ctx, memory = _random_rows(rng, 150, grid), None, ent.ModelMemory()
    frames.append((FrameKind.I_NEW_GRID, grid.to_bytes() + ent.encode_intra(_q(state), grid)))
    p_frame(rng.choice(150, 30, replace=False), small(30), 3, grid)
    p_frame(rng.choice(150, 30, replace=False), small(30), 0, grid)
    # an empty I-frame, then a P-frame that only adds
    state, ctx, memory = np.zeros((0, 8), dtype=np.int64), None, ent.ModelMemory()
    frames.append((FrameKind.I, ent.encode_intra(_q(state), grid)))
    p_frame(np.zeros(0, dtype=np.int64), np.zeros((0, 8), dtype=np.int64), 40, grid)
    first = _grid(xy_bits=10, xr=1, ar=1, seed=seed)
    return pack_gop(GopHeader(height, width, len(frames), first, flags), frames)


def _synthetic(path: Path, flags: int = 0) -> None:
    height, width = 23, 37
    with forced_plans():
        gops = [_synthetic_gop(seed, height, width, flags) for seed in (1, 2)]
    header = StreamHeader(width, height, 25, 1, 12, {"fixture": "synthetic"})
    with ContainerWriter(path, header) as w:
        w.add_gop(1, 12, 12, gops[1])  # chunks out of GOP order
        w.add_gop(0, 0, 12, gops[0])


def _clip(t: int, height: int, width: int) -> np.ndarray:
    """uint8 [t, h, w, 3]: a moving blob on a gradient, then a different scene from frame t // 2."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = []
    for i in range(t):
        if i < t // 2:
            cx, cy = 8 + 2 * i, height / 2
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 20.0)
            img = np.stack([xx / width, yy / height, 0.3 + 0.0 * xx], -1) * 0.6 + blob[
                ..., None
            ] * [0.4, 0.1, 0.6]
        else:
            img = np.stack(
                [0.5 + 0.5 * np.sin(xx / 3 + i), 0.5 + 0.5 * np.cos(yy / 4), 1 - xx / width], -1
            )
        frames.append((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    return np.stack(frames)


def _encoded(path: Path) -> None:
    height, width, t = 27, 35, 8
    config = CodecConfig.preset("fast", 5)
    fit = replace(config.fit, iframe_iters=150, pframe_iters=30, scene_cut_psnr_db=24.0)
    config = replace(config, fit=fit)
    frames = _clip(t, height, width)
    header = StreamHeader(width, height, 30000, 1001, t, config.to_compact())
    with ContainerWriter(path, header) as w:
        w.add_gop(0, 0, t, encode_gop(frames, config))


# --------------------------------------------------------------------------- expectations


def expected(path: Path) -> tuple[bytes, np.ndarray, dict[str, Any]]:
    """What the Python decoder makes of ``path``: (params file bytes, frames u8 [T, H, W, 3], facts)."""
    from codec.bitstream import unpack_gop
    from codec.gop import _touched

    params = bytearray()
    frames = []
    kinds: set[str] = set()
    flags: set[int] = set()
    with coverage() as seen, ContainerReader(path) as reader:
        for e in reader.gops:
            payload = reader.read_gop(e.index)
            frames.append(decode_gop(payload))
            head, coded = unpack_gop(payload)
            flags.add(head.flags)
            grid, state, ctx, memory = head.grid, None, None, ent.ModelMemory()
            fmt, gsize = head.version, grid_nbytes(head.version)
            for kind, data in coded:
                if kind == FrameKind.I:
                    state, ctx, memory = ent.decode_intra(data, grid, fmt), None, ent.ModelMemory()
                    kinds.add("I" if len(state) else "I-empty")
                elif kind == FrameKind.I_NEW_GRID:
                    grid = QuantGrid.from_bytes(data[:gsize], fmt)
                    state, ctx = ent.decode_intra(data[gsize:], grid, fmt), None
                    memory = ent.ModelMemory()
                    kinds.add("I-new-grid")
                else:
                    assert state is not None
                    nxt = ent.decode_inter(data, state, grid, ctx, memory, fmt)
                    ctx = _touched(state, nxt)
                    kinds.add("P-skip" if len(data) == 2 and data == b"\0\0" else "P")
                    state = nxt
                g = dequantize(state, grid)
                x = torch.cat([g.xy_px, g.chol, g.rgb], dim=1).numpy().astype("<f4")
                params += struct.pack("<I", len(x)) + x.tobytes()
        facts = {
            "width": reader.header.width,
            "height": reader.header.height,
            "n_frames": reader.n_frames,
            "n_gops": len(reader.gops),
        }
    facts["render"] = sorted({"canonical" if f & RENDER_CANONICAL else "legacy" for f in flags})
    facts["modes"] = sorted(seen["modes"])
    facts["predictors"] = sorted(seen["predictors"])
    facts["index_modes"] = sorted(seen["index"])
    facts["frame_kinds"] = sorted(kinds)
    return bytes(params), np.concatenate(frames), facts


def _synthetic_canonical(path: Path) -> None:
    _synthetic(path, RENDER_CANONICAL)


# name -> writer; None: a frozen file written by an earlier encoder, kept as it is (files keep
# playing): ``encoded`` is from before the RENDER_CANONICAL flag (GOP flags 0, the legacy render;
# its GOP header also carries the scene cut's grid, as that encoder wrote it)
FIXTURES: dict[str, Callable[[Path], None] | None] = {
    "synthetic": _synthetic,
    "synthetic_canonical": _synthetic_canonical,
    "encoded": None,
    "encoded_canonical": _encoded,
    # every earlier GOP format (copies of tests/fixtures/gsv/gop_v*.gsv, legacy render)
    **{f"gop_v{v}": None for v in range(1, 7)},
}
FROZEN_SOURCES = {
    f"gop_v{v}": FIXTURE_DIR.parents[1] / "fixtures/gsv" / f"gop_v{v}.gsv" for v in range(1, 7)
}


def write_all(out: Path = FIXTURE_DIR) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, make in FIXTURES.items():
        gsv = out / f"{name}.gsv"
        if make is not None:
            make(gsv)
        elif not gsv.exists() and name in FROZEN_SOURCES:
            shutil.copyfile(FROZEN_SOURCES[name], gsv)
        elif not gsv.exists():
            raise FileNotFoundError(f"{gsv}: a frozen fixture cannot be re-made")
        params, frames, facts = expected(gsv)
        (out / f"{name}.params.bin").write_bytes(params)
        (out / f"{name}.frames.bin").write_bytes(frames.tobytes())
        (out / f"{name}.json").write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")
        print(name, gsv.stat().st_size, "bytes", facts)


if __name__ == "__main__":
    write_all()
