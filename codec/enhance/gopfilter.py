"""The per-GOP least-squares post-filter (GOP format 7): the enhancer's content-adaptive part that
pays (BENCHMARKS.md "per-GOP filter").

A fixed post-filter cannot restore frames whose Gaussians were fitted to them
(bench/enhance_headroom.py), but a filter fitted on the GOP's *own* decoded and source frames
and sent with it can: like a video codec's adaptive loop filter, outside the prediction loop.
Per output channel ``c``: ``out_c = sum_{taps, in-channels} w * decoded + b``, over a k x k
window (edge-replicated) of channel ``c`` alone or of all three channels (:data:`SHAPES`).
The coefficients travel as integer levels of ``(w - identity) / step`` with ``step = 2**-bits``
(:data:`STEP_BITS`), so the centre tap's 1 costs nothing.

Coefficient layout (``n_coefs(shape)`` per output channel, output channels in R, G, B order):
taps in row-major order (``dy`` then ``dx`` in ``-r..r``), within a tap the input channels (one
or three), then the offset ``b`` (in [0, 1] units).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SHAPES = ((3, False), (5, False), (5, True))  # (window side, all three input channels)
STEP_BITS = (6, 7, 8, 9, 10)  # coefficient step 2**-bits
FIT_MAX_PIXELS = 2_000_000  # pixels (per frame set) the normal equations see, evenly subsampled


def n_coefs(shape: int) -> int:
    """Coefficients per output channel of shape index ``shape``."""
    k, cross = SHAPES[shape]
    return k * k * (3 if cross else 1) + 1


def identity(shape: int) -> np.ndarray:
    """float64 [3, n_coefs]: the coefficients of the identity filter."""
    k, cross = SHAPES[shape]
    out = np.zeros((3, n_coefs(shape)))
    centre = (k // 2) * k + k // 2
    for c in range(3):
        out[c, centre * 3 + c if cross else centre] = 1.0
    return out


def _kernel(coefs: np.ndarray, shape: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight float32 [3, 3, k, k], bias float32 [3]) of a conv2d applying ``coefs`` [3, n]."""
    k, cross = SHAPES[shape]
    w = np.zeros((3, 3, k, k))
    for c in range(3):
        taps = coefs[c, :-1].reshape(k, k, 3 if cross else 1)
        if cross:
            w[c] = taps.transpose(2, 0, 1)
        else:
            w[c, c] = taps[:, :, 0]
    return torch.from_numpy(w).float(), torch.from_numpy(coefs[:, -1].copy()).float()


def apply(frames_u8: np.ndarray, coefs: np.ndarray, shape: int) -> np.ndarray:
    """uint8 [T, H, W, 3] filtered with ``coefs`` (float [3, n_coefs]) -> uint8 [T, H, W, 3]."""
    k = SHAPES[shape][0]
    weight, bias = _kernel(coefs, shape)
    out = np.empty_like(frames_u8)
    with torch.no_grad():
        for i in range(frames_u8.shape[0]):
            x = torch.from_numpy(np.ascontiguousarray(frames_u8[i])).permute(2, 0, 1)[None]
            x = F.pad(x.float() / 255.0, (k // 2,) * 4, mode="replicate")
            y = F.conv2d(x, weight, bias)[0].clamp(0.0, 1.0) * 255.0
            out[i] = y.round().to(torch.uint8).permute(1, 2, 0).numpy()
    return out


def _feature_index(shape: int, c: int) -> np.ndarray:
    """int64 [n_coefs(shape)]: where output channel ``c``'s features of ``shape`` sit among the
    features of the largest shape (5x5 over three channels, then the offset)."""
    k, cross = SHAPES[shape]
    big = SHAPES[-1][0]
    off = (big - k) // 2
    # Fit's features are in unfold's order: channel-major, then the big window's taps
    idx = [
        ch * big * big + (dy + off) * big + dx + off
        for dy in range(k)
        for dx in range(k)
        for ch in (range(3) if cross else [c])
    ]
    return np.asarray([*idx, big * big * 3])


class Fit:
    """Least squares of every shape at once: the normal equations of the largest shape (its
    features contain every smaller shape's), over at most FIT_MAX_PIXELS evenly spaced pixels of
    ``recon``/``source`` (uint8 [T, H, W, 3])."""

    def __init__(self, recon_u8: np.ndarray, source_u8: np.ndarray) -> None:
        k = SHAPES[-1][0]
        r = k // 2
        t_count, h, w, _ = recon_u8.shape
        stride = max(1, int(np.ceil(np.sqrt(t_count * h * w / FIT_MAX_PIXELS))))
        n = k * k * 3 + 1
        self.gram = np.zeros((n, n))  # X^T X
        self.rhs = np.zeros((3, n))  # X^T y_c
        self.yy = np.zeros(3)  # y_c^T y_c
        self.n_px = 0
        m = n - 1
        for f in range(t_count):
            d = torch.from_numpy(np.ascontiguousarray(recon_u8[f])).permute(2, 0, 1)[None]
            d = F.pad(d.double() / 255.0, (r, r, r, r), mode="replicate")
            # the sampling phase moves from frame to frame (all stride^2 phases over a long GOP),
            # so a fixed grid of the source (8x8 DCT blocks, 2x upscaling) cannot bias the fit
            phase = f % (stride * stride)
            oy, ox = phase // stride, phase % stride
            d = d[:, :, oy:, ox:]
            cols = F.unfold(d, k, stride=stride)[0]  # [3 * k*k, L]: channel-major, then taps
            src = source_u8[f, oy::stride, ox::stride].astype(np.float64) / 255.0
            y = torch.from_numpy(src.reshape(-1, 3))  # [L, 3], row-major like unfold's positions
            s1 = cols.sum(dim=1)
            self.gram[:m, :m] += (cols @ cols.T).numpy()  # the offset's row and column: sums
            self.gram[:m, m] += s1.numpy()
            self.gram[m, :m] += s1.numpy()
            self.gram[m, m] += cols.shape[1]
            self.rhs[:, :m] += (cols @ y).numpy().T
            self.rhs[:, m] += y.sum(dim=0).numpy()
            self.yy += (y * y).sum(dim=0).numpy()
            self.n_px += int(y.shape[0])
        self.scale = t_count * h * w / max(self.n_px, 1)  # sampled pixels -> all pixels

    def coefs(self, shape: int) -> np.ndarray:
        """float64 [3, n_coefs(shape)]: the least-squares filter of ``shape``."""
        n = n_coefs(shape)
        out = np.empty((3, n))
        for c in range(3):
            idx = _feature_index(shape, c)
            g = self.gram[np.ix_(idx, idx)]
            ridge = 1e-6 * max(float(np.trace(g)) / n, 1e-12) * np.eye(n)  # flat GOPs: singular
            out[c] = np.linalg.solve(g + ridge, self.rhs[c, idx])
        return out

    def sse_levels2(self, coefs: np.ndarray, shape: int) -> float:
        """Predicted squared error of ``coefs`` over the whole GOP in 8-bit levels^2 (before the
        output's clamping and rounding, from the sampled normal equations)."""
        total = 0.0
        for c in range(3):
            idx = _feature_index(shape, c)
            w = coefs[c]
            g = self.gram[np.ix_(idx, idx)]
            total += float(w @ g @ w - 2.0 * w @ self.rhs[c, idx] + self.yy[c])
        return max(total, 0.0) * self.scale * 255.0**2


def quantise(coefs: np.ndarray, shape: int, step_bits: int) -> np.ndarray:
    """int64 [3, n_coefs]: levels of ``(coefs - identity) * 2**step_bits``."""
    return np.round((coefs - identity(shape)) * (1 << step_bits)).astype(np.int64)


def dequantise(levels: np.ndarray, shape: int, step_bits: int) -> np.ndarray:
    """float64 [3, n_coefs] from levels (inverse of :func:`quantise` up to rounding)."""
    return identity(shape) + levels.astype(np.float64) / (1 << step_bits)
