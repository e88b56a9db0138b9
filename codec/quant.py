"""Quantisation of Gaussians onto a per-GOP grid (seed 002, section 3.3 A).

Every attribute channel uses a uniform scalar quantiser ``value = lo + q * step`` with
integer level ``q`` in ``[0, 2**bits - 1]``:

* positions: one grid shared by x and y with ``2**xy_bits`` levels spanning the larger
  frame side plus ``QuantConfig.xy_margin`` of it beyond each edge (Gaussians just
  outside the frame still reach in), so both axes have the same alphabet and can be
  Morton-interleaved by the entropy coder;
* colours and the Cholesky off-diagonal ``l21``: per-channel min/max quantisers over a
  robust range (``QuantConfig.range_quantile`` .. ``1 - range_quantile``) of the I-frame's
  values;
* the Cholesky diagonals ``l11, l22``: *geometric* levels ``value = lo * ratio**q`` from
  the robust lower quantile up to the largest value (clipping the top 0.1% shrank the few
  large "background" Gaussians of a dense fit to a few pixels: carphone at 160 Gaussians per
  kpx lost 16 dB, BENCHMARKS.md issue 14), starting at or above
  :data:`codec.gaussians.MIN_CHOL_DIAG` so a
  dequantised covariance is always positive definite. A Gaussian's size matters relative
  to itself: on carphone at 6 bits, uniform diagonals cost 1.6 dB of the I-frame's PSNR
  and geometric ones 0.6 dB, for the same bits (BENCHMARKS.md). For these two channels the
  grid's ``chol_step`` holds ``ratio``, and the level table is built by repeated float64
  multiplication (exactly rounded IEEE operations, so bit-identical everywhere; no ``exp``).

The grid is fitted once per GOP on the I-frame and reused (with clamping) by its
P-frames. P-frame updates may use a *finer* grid than I-frames (``xy_refine`` and
``attr_refine``, GOP format 4): the grid's bit depths and steps are the fine ones, and
I-frames (and Gaussians a P-frame adds) use only every ``2**refine``-th level, which the
intra coder sends shifted down (:meth:`QuantGrid.intra_shifts`). Otherwise a fitted update
smaller than half an I-frame step is rounded away; half-level positions pay from quality 6
up (BENCHMARKS.md, "The top of the ladder").

The grid's parameters are float32 so that the encoder's in-memory grid and the one
the decoder parses from :meth:`QuantGrid.to_bytes` are bit-identical, and
:func:`dequantize` is computed in float64 then rounded once to float32 so encoder and
decoder reconstruct exactly the same values on any IEEE platform.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from codec.config import QuantConfig
from codec.errors import BitstreamError
from codec.gaussians import MIN_CHOL_DIAG, Gaussians

XY_BITS_RANGE = (6, 16)
ATTR_BITS_RANGE = (2, 12)
_MIN_SPAN = 1e-3  # smallest chol/rgb range (units of the attribute) when all values are equal
_DEFAULT_CHOL_HI = 4.0  # px, range used for an empty I-frame
_VALUE_CLIP = 1e6  # chol/rgb values beyond this magnitude (a diverged fit) do not widen the range
GEOMETRIC_CHOL = (0, 2)  # l11 and l22 use geometric levels
_MAX_RATIO = 16.0  # largest level ratio of a geometric channel
_MAX_LOG_DIAG = math.log(1e6)  # geometric levels stay below 1e6 px
# xy_bits chol_bits rgb_bits refine | xy_lo xy_step chol_lo[3] chol_step[3] rgb_lo[3] rgb_step[3]
_GRID_FMT = "<4B14f"
GRID_NBYTES = struct.calcsize(_GRID_FMT)  # 60
_GRID_FMT_V3 = "<3B14f"  # GOP formats 1 .. 3: no refinement byte (59 bytes)


def grid_nbytes(fmt: int) -> int:
    """Bytes of a quantisation grid in GOP format ``fmt``: 59 before format 4, then 60."""
    return GRID_NBYTES if fmt >= 4 else struct.calcsize(_GRID_FMT_V3)


MAX_REFINE = 4  # at most 16 P-frame levels per I-frame level


def _f32(x: float) -> float:
    """``x`` rounded to the nearest float32, as a Python float."""
    return float(np.float32(x))


@dataclass(frozen=True)
class QuantGrid:
    """Per-GOP quantiser parameters: ``value = lo + q * step`` per channel, all float32-exact.

    Bit depths and steps are those of the fine (P-frame) grid; I-frame levels are the multiples
    of ``2**xy_refine`` (positions) and ``2**attr_refine`` (Cholesky and colour)."""

    xy_bits: int
    chol_bits: int
    rgb_bits: int
    xy_lo: float  # px, same origin for x and y
    xy_step: float  # px
    chol_lo: tuple[float, float, float]
    chol_step: tuple[float, float, float]
    rgb_lo: tuple[float, float, float]
    rgb_step: tuple[float, float, float]
    xy_refine: int = 0  # P-frame position levels per I-frame level: 2**xy_refine
    attr_refine: int = 0  # the same for the Cholesky and colour channels
    # geometric levels for l11, l22 (GOP format 2 on); False only for grids read from format 1
    # files, whose diagonals were uniform like the other channels (chol_step is then a step)
    geometric_diag: bool = True

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem:
            raise ValueError(f"invalid QuantGrid: {problem}")

    def problem(self) -> str | None:
        """What is wrong with these parameters, or None when they are valid."""
        if not XY_BITS_RANGE[0] <= self.xy_bits <= XY_BITS_RANGE[1]:
            return f"xy_bits={self.xy_bits} outside {XY_BITS_RANGE}"
        for name, bits in (("chol_bits", self.chol_bits), ("rgb_bits", self.rgb_bits)):
            if not ATTR_BITS_RANGE[0] <= bits <= ATTR_BITS_RANGE[1]:
                return f"{name}={bits} outside {ATTR_BITS_RANGE}"
        if not 0 <= self.xy_refine <= MAX_REFINE or not 0 <= self.attr_refine <= MAX_REFINE:
            return f"xy_refine={self.xy_refine} and attr_refine={self.attr_refine} must be in [0, {MAX_REFINE}]"
        if self.xy_bits - self.xy_refine < XY_BITS_RANGE[0]:
            return (
                f"xy_bits - xy_refine = {self.xy_bits - self.xy_refine} is below {XY_BITS_RANGE[0]}"
            )
        if min(self.chol_bits, self.rgb_bits) - self.attr_refine < ATTR_BITS_RANGE[0]:
            return f"attr_refine={self.attr_refine} leaves I-frames fewer than {ATTR_BITS_RANGE[0]} bits"
        if len(self.chol_lo) != 3 or len(self.chol_step) != 3:
            return "chol_lo and chol_step need 3 entries"
        if len(self.rgb_lo) != 3 or len(self.rgb_step) != 3:
            return "rgb_lo and rgb_step need 3 entries"
        groups = (
            ("xy", (self.xy_lo,), (self.xy_step,), self.xy_bits),
            ("chol", self.chol_lo, self.chol_step, self.chol_bits),
            ("rgb", self.rgb_lo, self.rgb_step, self.rgb_bits),
        )
        for name, los, steps, bits in groups:
            for lo, step in zip(los, steps, strict=True):
                if _f32(lo) != lo or _f32(step) != step:
                    return f"{name} parameters must be float32 values"
                if not (math.isfinite(lo) and math.isfinite(step)) or abs(lo) > 1e9:
                    return f"{name} lo={lo} step={step} not finite or absurd"
                if not 0.0 < step <= 1e9 / (2**bits):
                    return f"{name} step={step} must be in (0, {1e9 / 2**bits:g}]"
        for i in GEOMETRIC_CHOL:
            if self.chol_lo[i] < MIN_CHOL_DIAG:
                return f"chol_lo[{i}]={self.chol_lo[i]} is below MIN_CHOL_DIAG={MIN_CHOL_DIAG}"
            if not self.geometric_diag:
                continue
            ratio = self.chol_step[i]
            if not 1.0 < ratio <= _MAX_RATIO:
                return f"chol_step[{i}]={ratio} (a level ratio) must be in (1, {_MAX_RATIO}]"
            if (
                math.log(self.chol_lo[i]) + (2**self.chol_bits - 1) * math.log(ratio)
                > _MAX_LOG_DIAG
            ):
                return f"chol[{i}] levels reach past {math.exp(_MAX_LOG_DIAG):g} px"
        return None

    def to_bytes(self) -> bytes:
        """60 bytes: three u8 bit depths, u8 refinement (``xy_refine | attr_refine << 4``), then 14
        little-endian float32 (see docs/FORMAT.md)."""
        if not self.geometric_diag:
            raise ValueError("a GOP format 1 grid (uniform diagonals) cannot be written")
        return struct.pack(
            _GRID_FMT,
            self.xy_bits,
            self.chol_bits,
            self.rgb_bits,
            self.xy_refine | (self.attr_refine << 4),
            self.xy_lo,
            self.xy_step,
            *self.chol_lo,
            *self.chol_step,
            *self.rgb_lo,
            *self.rgb_step,
        )

    @staticmethod
    def from_bytes(data: bytes, fmt: int = 5) -> QuantGrid:
        """Inverse of :meth:`to_bytes`; anything but a valid grid of GOP format ``fmt`` (59 bytes
        without the refinement byte before format 4) raises BitstreamError."""
        n = grid_nbytes(fmt)
        if len(data) != n:
            raise BitstreamError(f"quant grid: expected {n} bytes, got {len(data)}")
        if fmt >= 4:
            v = struct.unpack(_GRID_FMT, bytes(data))
        else:
            v0 = struct.unpack(_GRID_FMT_V3, bytes(data))
            v = (*v0[:3], 0, *v0[3:])
        f = [float(x) for x in v[4:]]
        try:
            return QuantGrid(
                int(v[0]), int(v[1]), int(v[2]), f[0], f[1],
                (f[2], f[3], f[4]), (f[5], f[6], f[7]), (f[8], f[9], f[10]), (f[11], f[12], f[13]),
                xy_refine=int(v[3]) & 15, attr_refine=int(v[3]) >> 4, geometric_diag=fmt >= 2,
            )  # fmt: skip
        except ValueError as exc:
            raise BitstreamError(f"quant grid: {exc}") from exc

    def diag_table(self, i: int) -> Tensor:
        """float64 [2**chol_bits]: the values of the geometric levels of Cholesky channel ``i``
        (0 or 2), ``lo * ratio**q`` by repeated multiplication (bit-exact on IEEE hardware)."""
        n = 2**self.chol_bits
        out = np.empty(n, dtype=np.float64)
        v, r = float(self.chol_lo[i]), float(self.chol_step[i])
        for q in range(n):
            out[q] = v
            v = v * r
        return torch.from_numpy(out)

    def intra_shifts(self) -> np.ndarray:
        """int64 [8]: per channel (x y l11 l21 l22 r g b), the log2 of the fine levels per I-frame level."""
        return np.array([self.xy_refine] * 2 + [self.attr_refine] * 6, dtype=np.int64)

    def intra_units(self) -> Tensor:
        """float64 [8]: fine levels per I-frame level per channel, ``2**intra_shifts()``."""
        return torch.from_numpy(np.left_shift(1, self.intra_shifts())).to(torch.float64)

    def level_steps(self, intra: bool = False) -> Tensor:
        """float32 [8]: the size of one fine level (one I-frame level with ``intra``) per channel,
        in the channel's unit; for the geometric diagonals in units of log(value) (``log(ratio)``)."""
        steps = [self.xy_step, self.xy_step, *self.chol_step, *self.rgb_step]
        for i in GEOMETRIC_CHOL:
            steps[2 + i] = math.log(self.chol_step[i])
        out = torch.tensor(steps, dtype=torch.float32)
        if intra:
            out = out * self.intra_units().to(torch.float32)
        return out

    def _channels(self) -> tuple[Tensor, Tensor, Tensor]:
        """(lo [8], step [8], levels [8]) float64 for the channel order x y l11 l21 l22 r g b."""
        lo = (self.xy_lo, self.xy_lo, *self.chol_lo, *self.rgb_lo)
        step = (self.xy_step, self.xy_step, *self.chol_step, *self.rgb_step)
        bits = (self.xy_bits,) * 2 + (self.chol_bits,) * 3 + (self.rgb_bits,) * 3
        return (
            torch.tensor(lo, dtype=torch.float64),
            torch.tensor(step, dtype=torch.float64),
            torch.tensor([2**b for b in bits], dtype=torch.float64),
        )


def _robust_range(v: np.ndarray, quantile: float) -> tuple[float, float]:
    """(lo, hi) of float64 ``v`` [N] between the ``quantile`` and ``1 - quantile`` quantiles."""
    if quantile <= 0.0:
        return float(v.min()), float(v.max())
    lo, hi = np.quantile(v, [quantile, 1.0 - quantile])
    return float(lo), float(hi)


def _geometric(lo: float, hi: float, bits: int, refine: int = 0) -> tuple[float, float]:
    """float32 (lo, ratio) of ``2**bits`` geometric levels from ``max(lo, MIN_CHOL_DIAG)`` to ``hi``,
    each split into ``2**refine`` finer levels (the ratio returned is the fine one)."""
    lo = min(max(lo, MIN_CHOL_DIAG), math.exp(_MAX_LOG_DIAG) / 2)
    hi = min(max(hi, lo * (1.0 + _MIN_SPAN)), math.exp(_MAX_LOG_DIAG) / 2)
    lo32 = _f32(lo)
    if lo32 < MIN_CHOL_DIAG:  # float32 rounding must not cross the floor
        lo32 = float(np.nextafter(np.float32(lo32), np.float32(np.inf)))
    ratio = _f32(math.exp(math.log(hi / lo32) / ((2**bits - 1) * 2**refine)))
    if ratio <= 1.0:
        ratio = float(np.nextafter(np.float32(1.0), np.float32(2.0)))
    return lo32, ratio


def _uniform(
    lo: float, hi: float, bits: int, floor: float | None = None, refine: int = 0
) -> tuple[float, float]:
    """float32 (lo, step) of a ``2**bits``-level quantiser covering [lo, hi]; the step returned is
    ``1 / 2**refine`` of it (exact in float32)."""
    if floor is not None:
        lo = max(lo, floor)
    hi = max(hi, lo + _MIN_SPAN)
    lo32 = _f32(lo)
    if floor is not None and lo32 < floor:  # float32 rounding must not cross the floor
        lo32 = float(np.nextafter(np.float32(lo32), np.float32(np.inf)))
    step = _f32((hi - lo32) / (2**bits - 1))
    return lo32, step / 2**refine


def position_bits(span_px: float, cfg: QuantConfig) -> int:
    """Position bit depth for a grid spanning ``span_px``: the one whose step is nearest
    ``cfg.xy_step_px``, within [XY_BITS_RANGE[0], cfg.xy_bits]."""
    if cfg.xy_step_px <= 0:
        return cfg.xy_bits
    wanted = round(math.log2(max(span_px / cfg.xy_step_px, 1.0)))
    return int(min(max(wanted, XY_BITS_RANGE[0]), cfg.xy_bits))


def make_grid(g: Gaussians, height: int, width: int, cfg: QuantConfig) -> QuantGrid:
    """The grid for one GOP from its I-frame ``g`` (any device) in a ``height`` x ``width`` frame,
    refined for P-frames by ``cfg.pframe_xy_refine`` and ``cfg.pframe_attr_refine``."""
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    side = float(max(height, width))
    margin = cfg.xy_margin * side
    xy_bits = position_bits(side + 2 * margin, cfg)
    kx, ka = cfg.pframe_xy_refine, cfg.pframe_attr_refine
    xy_lo, xy_step = _uniform(-margin, side + margin, xy_bits, refine=kx)
    chol = g.chol.detach().double().cpu().numpy().clip(-_VALUE_CLIP, _VALUE_CLIP)  # [N, 3]
    rgb = g.rgb.detach().double().cpu().numpy().clip(-_VALUE_CLIP, _VALUE_CLIP)  # [N, 3]
    chol_lo: list[float] = []
    chol_step: list[float] = []
    rgb_lo: list[float] = []
    rgb_step: list[float] = []
    for c in range(3):
        diag = c in GEOMETRIC_CHOL
        col = chol[:, c][np.isfinite(chol[:, c])]
        if col.size:
            lo, hi = _robust_range(col, cfg.range_quantile)
            if diag:  # geometric levels reach the largest Gaussian for a few bits' precision
                hi = float(col.max())
        else:
            lo, hi = (
                (MIN_CHOL_DIAG, _DEFAULT_CHOL_HI) if diag else (-_DEFAULT_CHOL_HI, _DEFAULT_CHOL_HI)
            )
        a, b = (
            _geometric(lo, hi, cfg.chol_bits, ka)
            if diag
            else _uniform(lo, hi, cfg.chol_bits, refine=ka)
        )
        chol_lo.append(a)
        chol_step.append(b)
        col = rgb[:, c][np.isfinite(rgb[:, c])]
        lo, hi = _robust_range(col, cfg.range_quantile) if col.size else (0.0, 1.0)
        # the grid serves the whole GOP: colours always cover [0, 1] so that a GOP that
        # starts on a black or flat frame can still show the scene that follows
        lo, hi = min(lo, 0.0), max(hi, 1.0)
        a, b = _uniform(lo, hi, cfg.rgb_bits, refine=ka)
        rgb_lo.append(a)
        rgb_step.append(b)
    return QuantGrid(
        xy_bits=xy_bits + kx,
        chol_bits=cfg.chol_bits + ka,
        rgb_bits=cfg.rgb_bits + ka,
        xy_lo=xy_lo,
        xy_step=xy_step,
        chol_lo=(chol_lo[0], chol_lo[1], chol_lo[2]),
        chol_step=(chol_step[0], chol_step[1], chol_step[2]),
        rgb_lo=(rgb_lo[0], rgb_lo[1], rgb_lo[2]),
        rgb_step=(rgb_step[0], rgb_step[1], rgb_step[2]),
        xy_refine=kx,
        attr_refine=ka,
    )


@dataclass
class QGaussians:
    """Quantised Gaussians: integer levels on a :class:`QuantGrid` (int32 tensors, one device)."""

    xy: Tensor  # int32 [N, 2]
    chol: Tensor  # int32 [N, 3]
    rgb: Tensor  # int32 [N, 3]

    def __post_init__(self) -> None:
        n = self.xy.shape[0]
        if self.xy.shape != (n, 2) or self.chol.shape != (n, 3) or self.rgb.shape != (n, 3):
            raise ValueError(
                f"QGaussians need xy [N,2], chol [N,3], rgb [N,3]; got "
                f"{tuple(self.xy.shape)}, {tuple(self.chol.shape)}, {tuple(self.rgb.shape)}"
            )
        for name, t in (("xy", self.xy), ("chol", self.chol), ("rgb", self.rgb)):
            if t.dtype != torch.int32:
                raise ValueError(f"QGaussians.{name} must be int32, got {t.dtype}")

    def __len__(self) -> int:
        return int(self.xy.shape[0])

    def index(self, idx: Tensor) -> QGaussians:
        """Rows ``idx`` (int64 [K] or bool [N])."""
        return QGaussians(self.xy[idx], self.chol[idx], self.rgb[idx])

    def rows(self) -> Tensor:
        """All attributes side by side: int32 [N, 8] (x y l11 l21 l22 r g b)."""
        return torch.cat([self.xy, self.chol, self.rgb], dim=1)

    def equal_rows(self, other: QGaussians) -> Tensor:
        """bool [N]: row i of ``self`` equals row i of ``other`` in every attribute."""
        if len(self) != len(other):
            raise ValueError(f"equal_rows needs the same length, got {len(self)} and {len(other)}")
        return (self.rows() == other.rows().to(self.xy.device)).all(dim=1)

    def to(self, device: torch.device | str) -> QGaussians:
        return QGaussians(self.xy.to(device), self.chol.to(device), self.rgb.to(device))

    @staticmethod
    def cat(parts: list[QGaussians]) -> QGaussians:
        if not parts:
            return QGaussians.empty()
        return QGaussians(
            torch.cat([p.xy for p in parts]),
            torch.cat([p.chol for p in parts]),
            torch.cat([p.rgb for p in parts]),
        )

    @staticmethod
    def empty(device: torch.device | str = "cpu") -> QGaussians:
        def z(k: int) -> Tensor:
            return torch.zeros(0, k, dtype=torch.int32, device=device)

        return QGaussians(z(2), z(3), z(3))

    @staticmethod
    def from_rows(rows: Tensor) -> QGaussians:
        """Inverse of :meth:`rows` (int [N, 8])."""
        r = rows.to(torch.int32)
        return QGaussians(r[:, 0:2].contiguous(), r[:, 2:5].contiguous(), r[:, 5:8].contiguous())


def quantize(g: Gaussians, grid: QuantGrid, *, fine: bool = False) -> QGaussians:
    """Nearest I-frame levels of ``g`` on ``grid`` (with ``fine``: nearest P-frame levels),
    clamped to the range (NaN maps to level 0). Levels are always in fine units."""
    x = torch.cat([g.xy_px, g.chol, g.rgb], dim=1).detach().double()  # [N, 8]
    lo, step, levels = (t.to(x.device) for t in grid._channels())
    unit = torch.ones_like(levels) if fine else grid.intra_units().to(x)
    u = (x - lo) / step  # position on the fine grid
    for i in GEOMETRIC_CHOL:  # nearest level in log(value)
        c = 2 + i
        v = x[:, c].clamp(min=MIN_CHOL_DIAG)
        u[:, c] = torch.log(v / lo[c]) / math.log(float(step[c]))
    q = torch.round(u / unit)
    q = torch.nan_to_num(q, nan=0.0).clamp(min=torch.zeros_like(levels), max=levels / unit - 1)
    return QGaussians.from_rows((q * unit).to(torch.int32))


def dequantize(q: QGaussians, grid: QuantGrid) -> Gaussians:
    """float32 Gaussians: ``lo + q * step``, or the geometric level table for the Cholesky diagonals
    (float64 arithmetic, one rounding; bit-exact everywhere)."""
    lo, step, _ = (t.to(q.xy.device) for t in grid._channels())
    rows = q.rows()
    x = rows.double() * step + lo  # [N, 8]
    for i in GEOMETRIC_CHOL if grid.geometric_diag else ():
        x[:, 2 + i] = grid.diag_table(i).to(x.device)[rows[:, 2 + i].long()]
    x = x.float()
    return Gaussians(x[:, 0:2].contiguous(), x[:, 2:5].contiguous(), x[:, 5:8].contiguous())


def fake_quantize(g: Gaussians, grid: QuantGrid, *, fine: bool = False) -> Gaussians:
    """Straight-through quantisation for QAT: forward equals ``dequantize(quantize(g, fine=fine))``
    exactly, gradient is the identity (also where values are clamped)."""
    d = dequantize(quantize(g, grid, fine=fine), grid)

    def ste(x: Tensor, xq: Tensor) -> Tensor:
        return xq + (x - x.detach())  # x - x.detach() is exactly 0 forward

    return Gaussians(ste(g.xy_px, d.xy_px), ste(g.chol, d.chol), ste(g.rgb, d.rgb))
