"""Entropy coding of quantised Gaussians (seed 002, section 3.3 B) with ``constriction``.

A frame record is a few varints followed by one range-coded body (constriction's
``queue.RangeEncoder``, 32-bit words, little-endian, trailing zero bytes dropped). The
body is a sequence of *symbol streams*; each stream carries its own model and the
encoder picks, per stream, whatever codes smallest:

* a **predictor** from a short per-stream list (the value itself; the difference to a
  neighbour, in I-frames the nearest centre among the 16 rows before it in Morton order;
  the difference to a related channel of the same row, e.g. red and blue from green;
  or both), and
* a **model**: raw bits, a histogram over ``2**j`` equal-width bins of the residual
  (``j = 1 .. min(bits, 12)``; ``j = bits`` is the full histogram) with the in-bin offset
  sent raw, or a histogram over log-spaced classes (exponent plus ``m`` mantissa bits,
  ``m = 0..2``, as in exp-Golomb codes) with the remaining bits raw.

Why histograms and not fitted Laplace/Gaussian scales: the attributes are not unimodal
(colours follow the image's palette, Cholesky diagonals are skewed) so a two-parameter
model leaves bits on the table, and a histogram's integer table builds the identical
fixed-point model on every platform, where a parametric CDF depends on libm. The
histogram's cost is what limits it on small frames, so the levels are sent cheaply
(a 5-bit log-scale level per bin, costing under 0.01 bit per symbol against exact
probabilities, delta-coded under a static prior) and the bin resolution ``j`` adapts: coarse bins for a few hundred
Gaussians, the full histogram for tens of thousands. The encoder computes the exact cost
of every (predictor, model) pair from bin counts (a few ``bincount`` calls) and keeps the
cheapest, so side information is always counted.

Positions are sent as a sorted set: the gaps between consecutive Morton codes of the
quantised centres. Sending a set instead of a sequence already saves the ordering
freedom ``log2(N!)`` bits (:func:`ordering_freedom_bits`) that bits-back coding would
recover, so there is no separate bits-back mode.

P-frames send the sorted indices of changed rows (gap coded or as a run-length bitmap,
whichever is smaller), their new values as wrapped differences to the previous values
(each channel with its own model), then the added Gaussians exactly like an I-frame. A
P-frame with nothing changed and nothing added is two bytes.

Decoding checks every count before allocating (at most :data:`MAX_GAUSSIANS`, and at
most 256 Gaussians plus 8 per body byte, which the encoder guarantees by zero padding
in degenerate cases) and every decoded value against its range; anything wrong raises
:class:`BitstreamError`. The byte layout is in ``docs/FORMAT.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import constriction
import numpy as np
import torch
from torch import Tensor

from codec.bitstream import read_varint, write_varint
from codec.errors import BitstreamError
from codec.quant import QGaussians, QuantGrid

MAX_GAUSSIANS = 10_000_000  # per frame
DENSITY_FREE = 256  # Gaussians allowed in an empty body ...
DENSITY_PER_BYTE = 8  # ... plus this many per body byte (1 bit per Gaussian)

# Histogram level e (0..31) -> integer weight: 0 for an empty bin, else round(2 ** (e / 2)).
_LEVEL_W = np.array(
    [0, 1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512, 724, 1024,
     1448, 2048, 2896, 4096, 5793, 8192, 11585, 16384, 23170, 32768, 46341],
    dtype=np.float64,
)  # fmt: skip
_TOP_LEVEL = 31
# Static model of a level table's symbols s (0..61): 0 is an empty bin, s >= 1 a level of
# (previous non-empty level, 31 at the start) + unzigzag(s - 1). Weights 32768 for s = 0,
# else round(65536 / s**2).
_LEVEL_SYM_W = np.array([32768] + [round(65536 / s**2) for s in range(1, 62)], dtype=np.float64)
_LEVEL_SYM_BITS = -np.log2(_LEVEL_SYM_W / _LEVEL_SYM_W.sum())
_MAX_J = 12  # finest equal-width histogram: 4096 bins
# modes: 0 raw | 1..12 equal-width bins, j = mode | 13..15 log classes, m = mode - 13 | 16 zero
# | 17 reuse: the histogram this stream last sent in the GOP's P-frames (GOP format 5)
_N_MODES = 18
_MODE_LOG0 = 13
_MODE_ZERO = 16  # every residual is 0
_MODE_REUSE = 17

_Q = constriction.stream.queue
_M = constriction.stream.model
_UNIFORM_FAMILY = _M.Uniform()


def ordering_freedom_bits(n: int) -> float:
    """log2(n!): bits a coder that sent the rows as a sequence would spend on their order.

    Bits-back coding (seed 002 eq. 3) recovers this per I-frame; here it is saved by
    coding the Morton-sorted set of centres as gaps (for distinct centres the gap code
    costs about ``log2(binomial(2**(2*xy_bits), n))`` = raw bits minus ``log2(n!)``).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return math.lgamma(n + 1) / math.log(2)


# --------------------------------------------------------------------------- range coder


class _Writer:
    """Range encoder with the three primitives the format uses."""

    def __init__(self) -> None:
        self._enc = _Q.RangeEncoder()

    def uniform(self, symbols: np.ndarray, size: int) -> None:
        """``symbols`` in [0, size), 2 <= size <= 2**16, each costing log2(size) bits."""
        if symbols.size:
            self._enc.encode(symbols.astype(np.int32), _M.Uniform(size))

    def bits(self, values: np.ndarray, nbits: np.ndarray) -> None:
        """``values[i]`` (int64 >= 0) in ``nbits[i]`` (0..32) raw bits: low 16 first, then high."""
        lo_n = np.minimum(nbits, 16)
        hi_n = nbits - lo_n
        sel = lo_n > 0
        if sel.any():
            sizes = (np.int64(1) << lo_n[sel]).astype(np.int32)
            self._enc.encode((values[sel] & (sizes - 1)).astype(np.int32), _UNIFORM_FAMILY, sizes)
        sel = hi_n > 0
        if sel.any():
            sizes = (np.int64(1) << hi_n[sel]).astype(np.int32)
            self._enc.encode((values[sel] >> 16).astype(np.int32), _UNIFORM_FAMILY, sizes)

    def categorical(self, symbols: np.ndarray, weights: np.ndarray) -> None:
        if symbols.size:
            self._enc.encode(symbols.astype(np.int32), _M.Categorical(weights, perfect=False))

    def finish(self) -> bytes:
        words = self._enc.get_compressed()
        return words.astype("<u4").tobytes().rstrip(b"\0")


@dataclass(frozen=True)
class _Syntax:
    """What the symbol streams of one GOP format look like to a reader (docs/FORMAT.md)."""

    n_modes: int  # model modes a stream may name: 17 before GOP format 5 (no reuse), then 18
    med: bool  # the 'med' motion predictor is a P-frame position candidate (format 3 on)
    index_modes: int  # how a P-frame says which rows change: 2 (gaps, runs) before format 3


def _syntax(fmt: int) -> _Syntax:
    """The reader syntax of GOP format ``fmt`` (1 .. 5). Format 3 is read as it was from commit
    504af92 on, which added the context bitmap index mode without a version bump."""
    return _Syntax(
        n_modes=_N_MODES if fmt >= 5 else _MODE_REUSE,
        med=fmt >= 3,
        index_modes=_INDEX_MODES if fmt >= 3 else 2,
    )


class _Reader:
    """Range decoder mirroring :class:`_Writer`; every failure becomes BitstreamError."""

    def __init__(self, body: bytes, what: str, fmt: int = 5) -> None:
        self._what = what
        self.syntax = _syntax(fmt)
        raw = body.rstrip(b"\0")
        raw += b"\0" * (-len(raw) % 4)
        self._dec = _Q.RangeDecoder(np.frombuffer(raw, dtype="<u4").astype(np.uint32))

    def _decode(self, *args: object) -> np.ndarray:
        try:
            out = self._dec.decode(*args)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # constriction raises AssertionError or a pyo3 PanicException
            raise BitstreamError(f"{self._what}: invalid range-coded data ({exc})") from exc
        return np.asarray(out, dtype=np.int64)

    def uniform(self, n: int, size: int) -> np.ndarray:
        return self._decode(_M.Uniform(size), n) if n else np.zeros(0, np.int64)

    def bits(self, nbits: np.ndarray) -> np.ndarray:
        lo_n = np.minimum(nbits, 16)
        hi_n = nbits - lo_n
        out = np.zeros(nbits.shape, dtype=np.int64)
        sel = lo_n > 0
        if sel.any():
            out[sel] = self._decode(_UNIFORM_FAMILY, (np.int64(1) << lo_n[sel]).astype(np.int32))
        sel = hi_n > 0
        if sel.any():
            hi = self._decode(_UNIFORM_FAMILY, (np.int64(1) << hi_n[sel]).astype(np.int32))
            out[sel] |= hi << 16
        return out

    def categorical(self, n: int, weights: np.ndarray) -> np.ndarray:
        if not n:
            return np.zeros(0, np.int64)
        return self._decode(_M.Categorical(weights, perfect=False), n)

    def finish(self) -> None:
        if not self._dec.maybe_exhausted():
            raise BitstreamError(f"{self._what}: the body has data left over after the last symbol")


# --------------------------------------------------------------------------- symbol streams


class ModelMemory:
    """The last histogram model each P-frame symbol stream sent since the GOP's last I-frame.

    Encoder and decoder each keep one and update it identically, record by record; a stream
    whose distribution is like the previous frame's reuses that model (mode 17) instead of
    sending a level table, which was 11% of a P-frame's bits on carphone q4."""

    def __init__(self) -> None:
        self._tables: dict[str, tuple[int, int, np.ndarray]] = {}  # key -> (kbits, mode, levels)

    def get(self, key: str, kbits: int) -> tuple[int, np.ndarray] | None:
        """(mode, levels) last sent by stream ``key`` for ``kbits``-bit values, or None."""
        entry = self._tables.get(key)
        if entry is None or entry[0] != kbits:
            return None
        return entry[1], entry[2]

    def put(self, key: str, kbits: int, mode: int, levels: np.ndarray) -> None:
        self._tables[key] = (kbits, mode, levels)


_Memo = tuple[ModelMemory, str] | None  # a stream's model memory and key, or None (intra)


def _nbits(n: int) -> int:
    """Bits needed for values in [0, n): bit_length(n - 1), 0 for n <= 1."""
    return max(0, int(n) - 1).bit_length()


def _bit_length(v: np.ndarray) -> np.ndarray:
    """Exact bit length of int64 ``v`` in [0, 2**53)."""
    return np.frexp(v.astype(np.float64))[1].astype(np.int64)


def _zz(s: np.ndarray) -> np.ndarray:
    return np.where(s >= 0, 2 * s, -2 * s - 1)


def _unzz(u: np.ndarray) -> np.ndarray:
    return np.where(u & 1, -((u + 1) >> 1), u >> 1)


def _wrap(d: np.ndarray, size: int) -> np.ndarray:
    """Signed representative of ``d`` mod ``size`` in [-size/2, size/2)."""
    return (d + size // 2) % size - size // 2


NEAR_WINDOW = 16  # the "nb" predictor of a row is the nearest centre among the 16 rows before it


@dataclass(frozen=True)
class _Cand:
    """One predictor. Kinds: 'id' (the value), 'zz' (the value read as a signed difference),
    'nb' (difference to the value of row ``src[i] < i``, 0 for ``src[i] = -1``), 'cross'
    (difference to ``ref``, another channel of the same row), 'nbcross' (the 'nb' difference
    minus the same difference of ``ref``), 'med' (signed difference to the median of the values
    of rows ``src3[i]``: three earlier rows, or the first of fewer; see :func:`_med_inverse`)."""

    kind: str
    ref: np.ndarray | None = None  # int64 [N]
    src: np.ndarray | None = None  # int64 [N], src[i] < i
    src3: np.ndarray | None = None  # int64 [N, 3] for 'med': nearest earlier rows, -1 padded


def _gather(v: np.ndarray, src: np.ndarray) -> np.ndarray:
    """v[src] with 0 where src is -1."""
    return np.where(src >= 0, v[np.maximum(src, 0)], 0)


def _tree_cumsum(d: np.ndarray, src: np.ndarray) -> np.ndarray:
    """acc[i] = d[i] + acc[src[i]] (acc[-1] = 0) for src[i] < i, by pointer doubling."""
    if np.array_equal(src, np.arange(len(d)) - 1):
        return np.cumsum(d)
    acc, ptr = d.copy(), src.copy()
    while (ptr >= 0).any():
        live = ptr >= 0
        safe = np.maximum(ptr, 0)
        acc = np.where(live, acc + acc[safe], acc)
        ptr = np.where(live, ptr[safe], -1)
    return acc


def _near_src(xy: np.ndarray) -> np.ndarray:
    """int64 [N]: for each row the nearest (squared distance, then closest in order) of the
    NEAR_WINDOW rows before it, -1 for row 0."""
    n = len(xy)
    best = np.full(n, -1, dtype=np.int64)
    best_d = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    rows = np.arange(n)
    for k in range(1, min(NEAR_WINDOW, n - 1) + 1):
        j = rows[k:] - k
        d = ((xy[k:] - xy[j]) ** 2).sum(axis=1)
        better = d < best_d[k:]
        best_d[k:] = np.where(better, d, best_d[k:])
        best[k:] = np.where(better, j, best[k:])
    return best


MED_WINDOW = 32  # a 'med' row's neighbours are the 3 nearest centres among the 32 rows before it


def _near3_src(xy: np.ndarray) -> np.ndarray:
    """int64 [N, 3]: per row the three nearest (squared distance; on ties the latest) of the
    MED_WINDOW rows before it, nearest first, -1 where there are fewer."""
    n = len(xy)
    xy = xy.astype(np.int64)
    best = np.full((n, 3), -1, dtype=np.int64)
    best_d = np.full((n, 3), np.iinfo(np.int64).max, dtype=np.int64)
    rows = np.arange(n)
    for k in range(1, min(MED_WINDOW, n - 1) + 1):
        j = rows[k:] - k
        d = ((xy[k:] - xy[j]) ** 2).sum(axis=1)
        cur_d, cur = best_d[k:], best[k:]
        pos = (cur_d <= d[:, None]).sum(axis=1)  # [M] slot of the new candidate, 3 = not kept
        nd, ni = cur_d.copy(), cur.copy()
        for slot in (2, 1):
            shift = pos < slot
            nd[:, slot] = np.where(shift, cur_d[:, slot - 1], nd[:, slot])
            ni[:, slot] = np.where(shift, cur[:, slot - 1], ni[:, slot])
        for slot in range(3):
            put = pos == slot
            nd[:, slot] = np.where(put, d, nd[:, slot])
            ni[:, slot] = np.where(put, j, ni[:, slot])
        best_d[k:], best[k:] = nd, ni
    return best


def _med_forward(v: np.ndarray, src3: np.ndarray, size: int) -> np.ndarray:
    """Residuals of 'med': values are read signed (``_wrap``), predicted by the median of the three
    neighbours' (the nearest one's when fewer than three, 0 when none)."""
    sv = _wrap(v, size)
    valid = src3 >= 0
    vals = np.where(valid, sv[np.maximum(src3, 0)], 0)  # [N, 3]
    pred = np.where(valid[:, 2], np.sort(vals, axis=1)[:, 1], vals[:, 0])
    return _zz(_wrap(sv - pred, size))


def _med_inverse(r: np.ndarray, src3: np.ndarray, size: int) -> np.ndarray:
    """Inverse of :func:`_med_forward`, row by row (each prediction needs earlier rows)."""
    u = _unzz(r).tolist()
    half = size // 2
    out = [0] * len(u)
    for i, (a, b, c) in enumerate(src3.tolist()):
        if c >= 0:
            x, y, z = out[a], out[b], out[c]
            pred = max(min(x, y), min(max(x, y), z))
        elif a >= 0:
            pred = out[a]
        else:
            pred = 0
        out[i] = (pred + u[i] + half) % size - half
    return np.asarray(out, dtype=np.int64) % size


def _forward(v: np.ndarray, c: _Cand, kbits: int) -> np.ndarray:
    size = 1 << kbits
    if c.kind == "id":
        return v
    if c.kind == "med":
        assert c.src3 is not None
        return _med_forward(v, c.src3, size)
    if c.kind == "zz":
        return _zz(_wrap(v, size))
    u = v if c.ref is None or c.kind == "nb" else v - c.ref
    if c.kind in ("nb", "nbcross"):
        assert c.src is not None
        u = u - _gather(u, c.src)
    return _zz(_wrap(u, size))


def _inverse(r: np.ndarray, c: _Cand, kbits: int) -> np.ndarray:
    size = 1 << kbits
    if c.kind == "id":
        return r
    if c.kind == "med":
        assert c.src3 is not None
        return _med_inverse(r, c.src3, size)
    u = _unzz(r)
    if c.kind in ("nb", "nbcross"):
        assert c.src is not None
        u = _tree_cumsum(u, c.src)
    if c.kind in ("cross", "nbcross"):
        assert c.ref is not None
        u = u + c.ref
    return u % size


def _log_classes(kbits: int, m: int) -> int:
    """Number of exp-Golomb-style classes for values < 2**kbits with m mantissa bits."""
    t = 1 << (m + 1)
    return (1 << kbits) if kbits <= m + 1 else t + (kbits - m - 1) * (1 << m)


def _split(r: np.ndarray, kbits: int, mode: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class, extra value, extra bit count) of residuals ``r`` < 2**kbits under ``mode`` >= 1."""
    if mode < _MODE_LOG0:
        s = kbits - mode
        return r >> s, r & ((1 << s) - 1), np.full(r.shape, s, dtype=np.int64)
    m = mode - _MODE_LOG0
    t = 1 << (m + 1)
    blen = _bit_length(r)
    e = np.maximum(blen - 1 - m, 0)
    big = r >= t
    cls = np.where(big, t + (blen - m - 2) * (1 << m) + ((r >> e) & ((1 << m) - 1)), r)
    e = np.where(big, e, 0)
    return cls, r & ((np.int64(1) << e) - 1), e


def _class_extra_bits(cls: np.ndarray, kbits: int, mode: int) -> np.ndarray:
    if mode < _MODE_LOG0:
        return np.full(cls.shape, kbits - mode, dtype=np.int64)
    m = mode - _MODE_LOG0
    t = 1 << (m + 1)
    k = np.maximum(cls - t, 0)
    return np.where(cls >= t, k // (1 << m) + 1, 0)


def _join(cls: np.ndarray, extra: np.ndarray, kbits: int, mode: int) -> np.ndarray:
    if mode < _MODE_LOG0:
        return (cls << (kbits - mode)) | extra
    m = mode - _MODE_LOG0
    t = 1 << (m + 1)
    k = np.maximum(cls - t, 0)
    e = k // (1 << m) + 1  # = blen - 1 - m
    top = (1 << m) + (k & ((1 << m) - 1))
    return np.where(cls >= t, (top << e) | extra, cls)


def _levels(h: np.ndarray) -> np.ndarray:
    """5-bit log-scale level per bin of counts ``h``: 0 if empty, 31 for the largest."""
    out = np.zeros(h.shape, dtype=np.int64)
    nz = h > 0
    rel = 2.0 * np.log2(h[nz] / h.max())
    out[nz] = np.clip(_TOP_LEVEL + np.rint(rel).astype(np.int64), 1, _TOP_LEVEL)
    return out


def _level_symbols(lev: np.ndarray) -> np.ndarray:
    """Level table [C] -> its symbols under the static level model."""
    sym = np.zeros(lev.shape, dtype=np.int64)
    nz = lev > 0
    seq = lev[nz]
    sym[nz] = _zz(seq - np.concatenate([[_TOP_LEVEL], seq[:-1]])) + 1
    return sym


def _levels_from_symbols(sym: np.ndarray, what: str) -> np.ndarray:
    lev = np.zeros(sym.shape, dtype=np.int64)
    nz = sym > 0
    lev[nz] = _TOP_LEVEL + np.cumsum(_unzz(sym[nz] - 1))
    if not nz.any() or lev.min() < 0 or lev.max() > _TOP_LEVEL or (lev[nz] == 0).any():
        raise BitstreamError(f"{what}: invalid histogram level table")
    return lev


def _hist_cost(h: np.ndarray) -> tuple[float, np.ndarray]:
    """(bits for the level table plus the symbols counted in ``h``, levels)."""
    lev = _levels(h)
    w = _LEVEL_W[lev]
    nz = h > 0
    data = float(-(h[nz] * np.log2(w[nz] / w.sum())).sum())
    side = float(_LEVEL_SYM_BITS[_level_symbols(lev)].sum())
    return data + side, lev


@dataclass
class _Plan:
    cost: float  # estimated bits, headers included
    cand: int
    mode: int
    residual: np.ndarray
    levels: np.ndarray | None
    hist_mode: int = 0  # the histogram's own mode (1..15), for mode 17 the remembered one


def _reuse_cost(r: np.ndarray, kbits: int, prior: tuple[int, np.ndarray]) -> float:
    """Bits of residuals ``r`` under a remembered (mode, levels) model; inf if it cannot code them."""
    mode, lev = prior
    cls, _, nex = _split(r, kbits, mode)
    w = _LEVEL_W[lev]
    if (w[cls] == 0).any():
        return math.inf
    h = np.bincount(cls, minlength=len(w))
    nz = h > 0
    return float(-(h[nz] * np.log2(w[nz] / w.sum())).sum()) + float(nex.sum())


def _plan(v: np.ndarray, kbits: int, cands: list[_Cand], memo: _Memo = None) -> _Plan:
    """The cheapest (predictor, model) for values ``v`` (int64 [N], < 2**kbits); with ``memo``
    also the stream's remembered model."""
    n = v.size
    head = math.log2(_N_MODES) + (math.log2(len(cands)) if len(cands) > 1 else 0.0)
    prior = memo[0].get(memo[1], kbits) if memo is not None else None
    best: _Plan | None = None
    for ci, cand in enumerate(cands):
        r = _forward(v, cand, kbits)
        if not r.any():
            if best is None or head < best.cost:
                best = _Plan(head, ci, _MODE_ZERO, r, None)
            continue
        if prior is not None:
            cost = _reuse_cost(r, kbits, prior) + head
            if best is None or cost < best.cost:
                best = _Plan(cost, ci, _MODE_REUSE, r, prior[1], prior[0])
        options: list[tuple[float, int, np.ndarray | None]] = [(float(n * kbits), 0, None)]
        jmax = min(kbits, _MAX_J)
        h = np.bincount(r >> (kbits - jmax), minlength=1 << jmax)
        for j in range(jmax, 0, -1):
            cost, lev = _hist_cost(h)
            options.append((cost + n * (kbits - j), j, lev))
            h = h.reshape(-1, 2).sum(axis=1)
        for m in range(3):
            mode = _MODE_LOG0 + m
            cls, _, nex = _split(r, kbits, mode)
            cost, lev = _hist_cost(np.bincount(cls, minlength=_log_classes(kbits, m)))
            options.append((cost + float(nex.sum()), mode, lev))
        for cost, mode, levels in options:
            if best is None or cost + head < best.cost:
                best = _Plan(cost + head, ci, mode, r, levels, mode)
    assert best is not None
    return best


def _remember(memo: _Memo, kbits: int, mode: int, levels: np.ndarray | None) -> None:
    """A stream that sent a histogram (modes 1..15) leaves it in the memory for later frames."""
    if memo is not None and levels is not None and 1 <= mode < _MODE_ZERO:
        memo[0].put(memo[1], kbits, mode, levels)


def _write_plan(w: _Writer, p: _Plan, kbits: int, n_cands: int, memo: _Memo = None) -> None:
    if n_cands > 1:
        w.uniform(np.array([p.cand]), n_cands)
    w.uniform(np.array([p.mode]), _N_MODES)
    if p.mode == _MODE_ZERO:
        return
    if p.mode == 0:
        w.bits(p.residual, np.full(p.residual.shape, kbits, dtype=np.int64))
        return
    assert p.levels is not None
    if p.mode != _MODE_REUSE:
        w.categorical(_level_symbols(p.levels), _LEVEL_SYM_W)
        _remember(memo, kbits, p.mode, p.levels)
    cls, extra, nex = _split(p.residual, kbits, p.hist_mode)
    w.categorical(cls, _LEVEL_W[p.levels])
    w.bits(extra, nex)


def _put(w: _Writer, v: np.ndarray, kbits: int, cands: list[_Cand], memo: _Memo = None) -> None:
    """One symbol stream: values ``v`` (int64 [N], < 2**kbits); N is known to the decoder."""
    if v.size and kbits:
        _write_plan(w, _plan(v, kbits, cands, memo), kbits, len(cands), memo)


def _get(r: _Reader, n: int, kbits: int, cands: list[_Cand], memo: _Memo = None) -> np.ndarray:
    """Inverse of :func:`_put`: n values < 2**kbits."""
    if not n or not kbits:
        return np.zeros(n, dtype=np.int64)
    ci = int(r.uniform(1, len(cands))[0]) if len(cands) > 1 else 0
    mode = int(r.uniform(1, r.syntax.n_modes)[0])
    if mode == _MODE_ZERO:
        res = np.zeros(n, dtype=np.int64)
    elif mode == 0:
        res = r.bits(np.full(n, kbits, dtype=np.int64))
    else:
        if mode == _MODE_REUSE:
            prior = memo[0].get(memo[1], kbits) if memo is not None else None
            if prior is None:
                raise BitstreamError(f"{r._what}: a stream reuses a model it never sent")
            mode, lev = prior
        else:
            if mode < _MODE_LOG0 and mode > min(kbits, _MAX_J):
                raise BitstreamError(
                    f"{r._what}: histogram with 2**{mode} bins for {kbits}-bit values"
                )
            n_cls = (1 << mode) if mode < _MODE_LOG0 else _log_classes(kbits, mode - _MODE_LOG0)
            lev = _levels_from_symbols(r.categorical(n_cls, _LEVEL_SYM_W), r._what)
            _remember(memo, kbits, mode, lev)
        cls = r.categorical(n, _LEVEL_W[lev])
        res = _join(cls, r.bits(_class_extra_bits(cls, kbits, mode)), kbits, mode)
    return _inverse(res, cands[ci], kbits)


# --------------------------------------------------------------------------- Gaussians


def _spread16(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.uint64) & np.uint64(0xFFFF)
    for shift, mask in ((8, 0x00FF00FF), (4, 0x0F0F0F0F), (2, 0x33333333), (1, 0x55555555)):
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def _compact16(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.uint64) & np.uint64(0x55555555)
    for shift, mask in ((1, 0x33333333), (2, 0x0F0F0F0F), (4, 0x00FF00FF), (8, 0x0000FFFF)):
        v = (v | (v >> np.uint64(shift))) & np.uint64(mask)
    return v


def _morton(xy: np.ndarray) -> np.ndarray:
    """Z-order code (x in even bits, y in odd bits), int64 [N], of int64 xy [N, 2] < 2**16."""
    return (_spread16(xy[:, 0]) | (_spread16(xy[:, 1]) << np.uint64(1))).astype(np.int64)


def _rows(q: QGaussians) -> np.ndarray:
    """int64 [N, 8]: x y l11 l21 l22 r g b."""
    return q.rows().cpu().numpy().astype(np.int64)


def _to_q(rows: np.ndarray) -> QGaussians:
    return QGaussians.from_rows(torch.from_numpy(rows.astype(np.int32)))


def _bits_per_column(grid: QuantGrid) -> np.ndarray:
    return np.array([grid.xy_bits] * 2 + [grid.chol_bits] * 3 + [grid.rgb_bits] * 3)


def _check_rows(rows: np.ndarray, grid: QuantGrid, what: str) -> None:
    top = np.int64(1) << _bits_per_column(grid)
    if rows.size and ((rows < 0).any() or (rows >= top).any()):
        raise ValueError(f"{what}: levels outside the grid's range")
    if len(rows) > MAX_GAUSSIANS:
        raise ValueError(f"{what}: {len(rows)} Gaussians exceed the limit of {MAX_GAUSSIANS}")


def canonical_order(q: QGaussians) -> Tensor:
    """int64 [N] permutation sorting by Morton code of xy, ties by l11 l21 l22 r g b.

    A pure function of the set of rows (equal rows are interchangeable).
    """
    rows = _rows(q)
    if not len(rows):
        return torch.zeros(0, dtype=torch.int64)
    keys = [rows[:, c] for c in range(7, 1, -1)] + [_morton(rows[:, :2])]
    return torch.from_numpy(np.lexsort(keys).astype(np.int64))


# Predictor lists per attribute channel, in stream order (channel index into rows, cands).
_INTRA_ATTRS = (2, 3, 4, 6, 5, 7)  # l11 l21 l22 g r b
_CROSS_REF = {4: 2, 5: 6, 7: 6}  # l22 <- l11, r <- g, b <- g (x, y: dy <- dx for P-frames)


def _cands(base: str, src: np.ndarray, refs: dict[int, np.ndarray], c: int) -> list[_Cand]:
    """Predictors for channel ``c``: ``base``; neighbour row ``src``; with a cross-channel
    reference already sent, the reference and the neighbour difference of the reference."""
    out = [_Cand(base), _Cand("nb", src=src)]
    ref = {**_CROSS_REF, 1: 0}.get(c)
    if ref is not None and ref in refs:
        out += [_Cand("cross", refs[ref]), _Cand("nbcross", refs[ref], src)]
    return out


def _inter_cands(
    src: np.ndarray, near3: np.ndarray, refs: dict[int, np.ndarray], c: int, med: bool = True
) -> list[_Cand]:
    """P-frame delta predictors for channel ``c``: those of :func:`_cands`, plus for the position
    deltas the median of the three spatially nearest earlier updates (motion is coherent; not
    in GOP formats 1 and 2: ``med=False``)."""
    out = _cands("zz", src, refs, c)
    if med and c in (0, 1):
        out.append(_Cand("med", src3=near3))
    return out


def _intra_bits(grid: QuantGrid) -> np.ndarray:
    """int64 [8]: bits per channel of an intra-coded level (the fine grid's less its refinement)."""
    return _bits_per_column(grid) - grid.intra_shifts()


def _key(memory: ModelMemory | None, key: str) -> _Memo:
    return (memory, key) if memory is not None else None


def _put_set(
    w: _Writer, rows: np.ndarray, grid: QuantGrid, what: str, memory: ModelMemory | None = None
) -> None:
    """Rows (int64 [N, 8], Morton-sorted, on I-frame levels) as in an I-frame: Morton gaps of the
    I-frame-level positions, then attributes, all in I-frame levels."""
    shifts = grid.intra_shifts()
    if ((rows & ((1 << shifts) - 1)) != 0).any():
        raise ValueError(f"{what}: levels must be I-frame levels (quantize without fine=True)")
    rows = rows >> shifts
    morton = _morton(rows[:, :2])
    gaps = np.diff(morton, prepend=0)
    if (gaps < 0).any():
        raise ValueError(
            f"{what}: rows must be in Morton order (sort with canonical_order and keep that order as state)"
        )
    bits = _intra_bits(grid)
    _put(w, gaps, 2 * int(bits[0]), [_Cand("id")], _key(memory, "set.morton"))
    src = _near_src(rows[:, :2])
    done: dict[int, np.ndarray] = {}
    for c in _INTRA_ATTRS:
        _put(w, rows[:, c], int(bits[c]), _cands("id", src, done, c), _key(memory, f"set.{c}"))
        done[c] = rows[:, c]


def _get_set(r: _Reader, n: int, grid: QuantGrid, memory: ModelMemory | None = None) -> np.ndarray:
    rows = np.zeros((n, 8), dtype=np.int64)
    bits = _intra_bits(grid)
    morton = np.cumsum(_get(r, n, 2 * int(bits[0]), [_Cand("id")], _key(memory, "set.morton")))
    if n and morton[-1] >= (1 << (2 * int(bits[0]))):
        raise BitstreamError(f"{r._what}: Morton codes run past the position grid")
    rows[:, 0] = _compact16(morton).astype(np.int64)
    rows[:, 1] = _compact16(morton >> 1).astype(np.int64)
    src = _near_src(rows[:, :2])
    done: dict[int, np.ndarray] = {}
    for c in _INTRA_ATTRS:
        memo = _key(memory, f"set.{c}")
        rows[:, c] = _get(r, n, int(bits[c]), _cands("id", src, done, c), memo)
        done[c] = rows[:, c]
    return rows << grid.intra_shifts()


def _padded(body: bytes, n: int) -> bytes:
    """``body`` with zero bytes appended so that it satisfies the density bound for n rows."""
    need = -(-(n - DENSITY_FREE) // DENSITY_PER_BYTE)
    return body + b"\0" * max(0, need - len(body))


def _check_density(n: int, body_len: int, what: str, label: str) -> None:
    if n > MAX_GAUSSIANS:
        raise BitstreamError(f"{what}: {label}={n} exceeds the limit of {MAX_GAUSSIANS}")
    if n > DENSITY_FREE + DENSITY_PER_BYTE * body_len:
        raise BitstreamError(f"{what}: {label}={n} is impossible in a {body_len}-byte body")


def encode_intra(q: QGaussians, grid: QuantGrid) -> bytes:
    """An I-frame record for ``q`` (in canonical order, levels on ``grid``)."""
    rows = _rows(q)
    _check_rows(rows, grid, "encode_intra")
    if not len(rows):
        return write_varint(0)
    w = _Writer()
    _put_set(w, rows, grid, "encode_intra")
    return write_varint(len(rows)) + _padded(w.finish(), len(rows))


def decode_intra(data: bytes, grid: QuantGrid, fmt: int = 5) -> QGaussians:
    """Inverse of :func:`encode_intra` (or of GOP format ``fmt``'s); bad data raises BitstreamError."""
    what = "I-frame"
    data = bytes(data)
    n, pos = read_varint(data, 0, what)
    body = data[pos:]
    _check_density(n, len(body), what, "N")
    if not n:
        if body:
            raise BitstreamError(f"{what}: {len(body)} bytes after an empty frame")
        return QGaussians.empty()
    r = _Reader(body, what, fmt)
    rows = _get_set(r, n, grid)
    r.finish()
    return _to_q(rows)


_INDEX_MODES = 3  # how a P-frame says which rows change: 0 gaps, 1 runs, 2 context bitmap


def _flag_weights(n_g: int, k_g: int) -> np.ndarray:
    """The two-symbol model of a context group with ``k_g`` of ``n_g`` rows changing."""
    return np.array([n_g - k_g, k_g], dtype=np.float64)


def _get_ctx_bitmap(r: _Reader, groups: list[np.ndarray], k: int, what: str) -> np.ndarray:
    """Changed rows (int64 [k], sorted) from a context bitmap; counts must add up to ``k``."""
    picked: list[np.ndarray] = []
    for rows_g in groups:
        n_g = len(rows_g)
        if not n_g:
            continue
        k_g = int(r.uniform(1, n_g + 1)[0])
        if k_g == n_g:
            picked.append(rows_g)
        elif k_g:
            f_g = r.categorical(n_g, _flag_weights(n_g, k_g))
            if int(f_g.sum()) != k_g:
                raise BitstreamError(
                    f"{what}: a context group says {k_g} rows change, its bitmap {int(f_g.sum())}"
                )
            picked.append(rows_g[f_g.astype(bool)])
    idx = np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)
    if len(idx) != k:
        raise BitstreamError(
            f"{what}: the context bitmap has {len(idx)} changed rows, the header {k}"
        )
    return idx


def _run_lengths(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(zero runs, one runs) of the bitmap of sorted unique ``idx``: z0 >= 0, later z >= 1."""
    starts = np.flatnonzero(np.diff(idx, prepend=-2) != 1)
    ends = np.append(starts[1:], len(idx))  # exclusive, in positions of idx
    first, last = idx[starts], idx[ends - 1]
    zeros = first - np.concatenate([[0], last[:-1] + 1])
    return zeros, last - first + 1


def _ctx_groups(ctx: np.ndarray | None, n: int) -> list[np.ndarray]:
    """Row indices (int64, ascending) of the two context groups: rows the previous frame did not
    touch, then rows it did (``ctx`` bool [n]; None = nothing touched)."""
    if ctx is None:
        return [np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)]
    if ctx.shape != (n,):
        raise ValueError(f"context must have shape ({n},); got {ctx.shape}")
    return [np.flatnonzero(~ctx), np.flatnonzero(ctx)]


def _ctx_cost(groups: list[np.ndarray], flags: np.ndarray) -> float:
    """Bits of the context bitmap: per group its count, then its flags at the group's rate."""
    bits = 0.0
    for rows in groups:
        n_g = len(rows)
        if not n_g:
            continue
        k_g = int(flags[rows].sum())
        bits += math.log2(n_g + 1)
        if 0 < k_g < n_g:
            p = k_g / n_g
            bits += -n_g * (p * math.log2(p) + (1 - p) * math.log2(1 - p))
    return bits


def encode_inter(
    prev: QGaussians,
    changed_idx: Tensor,
    changed: QGaussians,
    added: QGaussians,
    grid: QuantGrid,
    ctx: np.ndarray | None = None,
    memory: ModelMemory | None = None,
) -> bytes:
    """A P-frame record: rows ``changed_idx`` (int64 [K], sorted, unique) of ``prev`` get the
    values ``changed`` (K rows); ``added`` (M rows, Morton-sorted) are appended. ``ctx`` (bool
    [len(prev)]) marks the rows the previous frame changed or added: the decoder knows it, and
    the coder may code which rows change as a bitmap in those two context groups. ``memory``
    (the GOP's, since its last I-frame; updated in place) lets streams reuse earlier models."""
    what = "encode_inter"
    old = _rows(prev)
    idx = torch.as_tensor(changed_idx).cpu().numpy().astype(np.int64).reshape(-1)
    new, add = _rows(changed), _rows(added)
    for name, part in (("prev", old), ("changed", new), ("added", add)):
        _check_rows(part, grid, f"{what}: {name}")
    n_prev, k, m = len(old), len(idx), len(add)
    if len(new) != k:
        raise ValueError(f"{what}: {k} indices but {len(new)} changed rows")
    if k and (idx[0] < 0 or idx[-1] >= n_prev or (np.diff(idx) <= 0).any()):
        raise ValueError(f"{what}: changed_idx must be sorted, unique and in [0, {n_prev})")
    if n_prev + m > MAX_GAUSSIANS:
        raise ValueError(f"{what}: {n_prev + m} Gaussians exceed the limit of {MAX_GAUSSIANS}")
    head = write_varint(k) + write_varint(m)
    if not k and not m:
        return head
    w = _Writer()
    if k:
        kb = _nbits(n_prev)
        gaps = np.diff(idx, prepend=-1) - 1
        memo_gaps, memo_z, memo_o = (_key(memory, k_) for k_ in ("gaps", "runs.z", "runs.o"))
        plan_gaps = _plan(gaps, kb, [_Cand("id")], memo_gaps) if kb else None
        zeros, ones = _run_lengths(idx)
        z = zeros - np.concatenate([[0], np.ones(len(zeros) - 1, dtype=np.int64)])
        plans_runs = (
            (_plan(z, kb, [_Cand("id")], memo_z) if kb else None),
            (_plan(ones - 1, _nbits(k), [_Cand("id")], memo_o) if _nbits(k) else None),
        )
        groups = _ctx_groups(ctx, n_prev)
        flags = np.zeros(n_prev, dtype=bool)
        flags[idx] = True
        costs = [
            plan_gaps.cost if plan_gaps else 0.0,
            _nbits(k) + sum(p.cost for p in plans_runs if p),
            _ctx_cost(groups, flags),
        ]
        mode = int(np.argmin(costs))  # first of equals
        w.uniform(np.array([mode]), _INDEX_MODES)
        if mode == 1:
            w.bits(np.array([len(ones) - 1]), np.array([_nbits(k)]))
            for p, nb, memo in zip(plans_runs, (kb, _nbits(k)), (memo_z, memo_o), strict=True):
                if p:
                    _write_plan(w, p, nb, 1, memo)
        elif mode == 2:
            for rows_g in groups:
                n_g = len(rows_g)
                if not n_g:
                    continue
                f_g = flags[rows_g]
                k_g = int(f_g.sum())
                w.uniform(np.array([k_g]), n_g + 1)
                if 0 < k_g < n_g:
                    w.categorical(f_g.astype(np.int64), _flag_weights(n_g, k_g))
        elif plan_gaps:
            _write_plan(w, plan_gaps, kb, 1, memo_gaps)
        bits = _bits_per_column(grid)
        src = np.arange(k) - 1
        near3 = _near3_src(old[idx, :2])
        done: dict[int, np.ndarray] = {}
        for c in (0, 1, *_INTRA_ATTRS):
            size = 1 << int(bits[c])
            d = (new[:, c] - old[idx, c]) % size
            _put(w, d, int(bits[c]), _inter_cands(src, near3, done, c), _key(memory, f"d.{c}"))
            done[c] = d
    if m:
        _put_set(w, add, grid, f"{what}: added", memory)
    return head + _padded(w.finish(), m)


def decode_inter(
    data: bytes,
    prev: QGaussians,
    grid: QuantGrid,
    ctx: np.ndarray | None = None,
    memory: ModelMemory | None = None,
    fmt: int = 5,
) -> QGaussians:
    """Inverse of :func:`encode_inter` (same ``ctx``, a ``memory`` in the state the encoder's
    was in, updated in place): ``prev`` with changed rows replaced and added rows appended.
    ``fmt`` is the GOP format the record was written in (1 .. 5)."""
    what = "P-frame"
    data = bytes(data)
    k, pos = read_varint(data, 0, what)
    m, pos = read_varint(data, pos, what)
    body = data[pos:]
    n_prev = len(prev)
    if k > n_prev:
        raise BitstreamError(f"{what}: {k} changed rows but the previous frame has {n_prev}")
    _check_density(m, len(body), what, "M")
    if n_prev + m > MAX_GAUSSIANS:
        raise BitstreamError(f"{what}: {n_prev + m} Gaussians exceed the limit of {MAX_GAUSSIANS}")
    rows = _rows(prev)
    if not k and not m:
        if body:
            raise BitstreamError(f"{what}: {len(body)} bytes after an empty update")
        return _to_q(rows)
    r = _Reader(body, what, fmt)
    if k:
        kb = _nbits(n_prev)
        mode = int(r.uniform(1, r.syntax.index_modes)[0])
        if mode == 2:
            idx = _get_ctx_bitmap(r, _ctx_groups(ctx, n_prev), k, what)
        elif mode == 1:
            n_runs = int(r.bits(np.array([_nbits(k)]))[0]) + 1
            if n_runs > k:
                raise BitstreamError(f"{what}: {n_runs} runs of changed rows but only {k} rows")
            z = _get(r, n_runs, kb, [_Cand("id")], _key(memory, "runs.z")) + (np.arange(n_runs) > 0)
            ones = _get(r, n_runs, _nbits(k), [_Cand("id")], _key(memory, "runs.o")) + 1
            if int(ones.sum()) != k:
                raise BitstreamError(f"{what}: run lengths do not add up to {k} changed rows")
            # run r covers [start_r, start_r + ones_r) with start_r = sum(z[:r+1]) + sum(ones[:r])
            idx = np.repeat(np.cumsum(z), ones) + np.arange(k)
        else:
            idx = np.cumsum(_get(r, k, kb, [_Cand("id")], _key(memory, "gaps")) + 1) - 1
        if idx[-1] >= n_prev:
            raise BitstreamError(f"{what}: changed row {int(idx[-1])} is beyond the {n_prev} rows")
        bits = _bits_per_column(grid)
        src = np.arange(k) - 1
        near3 = _near3_src(rows[idx, :2])  # before any column of these rows is updated
        done: dict[int, np.ndarray] = {}
        for c in (0, 1, *_INTRA_ATTRS):
            memo = _key(memory, f"d.{c}")
            d = _get(r, k, int(bits[c]), _inter_cands(src, near3, done, c, r.syntax.med), memo)
            done[c] = d
            rows[idx, c] = (rows[idx, c] + d) % (1 << int(bits[c]))
    if m:
        rows = np.concatenate([rows, _get_set(r, m, grid, memory)])
    r.finish()
    return _to_q(rows)
