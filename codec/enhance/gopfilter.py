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


def fit(recon_u8: np.ndarray, source_u8: np.ndarray, shape: int) -> np.ndarray:
    """float64 [3, n_coefs]: the least-squares filter from ``recon`` to ``source`` (uint8
    [T, H, W, 3]), from normal equations over at most FIT_MAX_PIXELS evenly spaced pixels."""
    k, cross = SHAPES[shape]
    r = k // 2
    t_count, h, w, _ = recon_u8.shape
    stride = max(1, int(np.ceil(np.sqrt(t_count * h * w / FIT_MAX_PIXELS))))
    n = n_coefs(shape)
    gram = np.zeros((3, n, n)) if not cross else np.zeros((1, n, n))
    rhs = np.zeros((3, n))
    for f in range(t_count):
        d = np.pad(recon_u8[f].astype(np.float64) / 255.0, ((r, r), (r, r), (0, 0)), mode="edge")
        s = source_u8[f, ::stride, ::stride].astype(np.float64) / 255.0  # [h', w', 3]
        win = [d[dy : dy + h : stride, dx : dx + w : stride] for dy in range(k) for dx in range(k)]
        taps = np.stack(win, axis=2)  # [h', w', k*k, 3]
        ones = np.ones(taps.shape[:2] + (1,))
        for c in range(3):
            cols = taps.reshape(*taps.shape[:2], -1) if cross else taps[:, :, :, c]
            x = np.concatenate([cols, ones], axis=2).reshape(-1, n)
            if cross:
                if c == 0:
                    gram[0] += x.T @ x
            else:
                gram[c] += x.T @ x
            rhs[c] += x.T @ s[:, :, c].reshape(-1)
    out = np.empty((3, n))
    ridge = 1e-6 * np.eye(n)  # flat GOPs make the equations singular
    for c in range(3):
        g = gram[0 if cross else c]
        out[c] = np.linalg.solve(g + ridge * max(float(np.trace(g)) / n, 1e-12), rhs[c])
    return out


def quantise(coefs: np.ndarray, shape: int, step_bits: int) -> np.ndarray:
    """int64 [3, n_coefs]: levels of ``(coefs - identity) * 2**step_bits``."""
    return np.round((coefs - identity(shape)) * (1 << step_bits)).astype(np.int64)


def dequantise(levels: np.ndarray, shape: int, step_bits: int) -> np.ndarray:
    """float64 [3, n_coefs] from levels (inverse of :func:`quantise` up to rounding)."""
    return identity(shape) + levels.astype(np.float64) / (1 << step_bits)
