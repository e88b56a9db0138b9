"""Quality and rate metrics, defined once for every codec (see MEASURING.md).

- PSNR on 8-bit RGB: MSE over all pixels and channels of one frame; a clip's
  PSNR is the mean of its per-frame PSNR, reported with two decimals.
  Identical frames have infinite PSNR; :func:`psnr_db` caps every value at
  :data:`PSNR_CAP_DB` so that means over a clip stay finite.
- MS-SSIM on RGB in [0, 1] (pytorch-msssim defaults: 11-tap Gaussian window,
  5 scales). MS-SSIM needs the shorter frame side above
  ``(11 - 1) * 2**4 = 160`` pixels; smaller frames get single-scale SSIM and the
  result says so (``used_ssim_fallback``).
- bpp: bytes * 8 / (width * height * frames).
- BD-rate: Bjontegaard delta rate, cubic fit of log-rate against PSNR, integrated
  over the PSNR interval both curves cover; never extrapolated.
- Perceptual (:func:`perceptual_metrics`): DSS and HaarPSI (``codec.perceptual``,
  written from their papers; they agree with ``piq`` 0.8.0) on RGB in [0, 1]
  (higher is better, 1 = identical), means over frames; both need no weights.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.polynomial import Polynomial
from pytorch_msssim import ms_ssim as _ms_ssim
from pytorch_msssim import ssim as _ssim

from codec.errors import CodecConfigError
from codec.perceptual import dss, haarpsi

PERCEPTUAL_MIN_SIDE = 32  # smaller frames get None for DSS and HaarPSI

PSNR_CAP_DB = 100.0  # identical frames; also caps near-identical frames above ~51k pixels
MS_SSIM_WIN = 11  # pytorch-msssim default window
MS_SSIM_MIN_SIDE = (MS_SSIM_WIN - 1) * 2**4 + 1  # 161: shorter side MS-SSIM's 4 downsamplings need
BD_MIN_POINTS = 4
_MS_SSIM_BATCH = 8  # frames per pytorch-msssim call in clip_metrics (bounds memory on large frames)


def _check_pair(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise CodecConfigError(f"{what} needs uint8 frames; got {a.dtype} and {b.dtype}")
    if a.shape != b.shape:
        raise CodecConfigError(f"{what} needs equal shapes; got {a.shape} and {b.shape}")
    if a.ndim < 3 or a.shape[-1] != 3 or a.shape[-2] == 0 or a.shape[-3] == 0:
        raise CodecConfigError(
            f"{what} needs RGB frames [..., H, W, 3] with H, W >= 1; got {a.shape}"
        )


def psnr_db(a_u8: np.ndarray, b_u8: np.ndarray) -> float:
    """PSNR in dB of two 8-bit RGB frames ``[H, W, 3]``, capped at ``PSNR_CAP_DB`` (identical frames)."""
    _check_pair(a_u8, b_u8, "psnr_db")
    if a_u8.ndim != 3:
        raise CodecConfigError(f"psnr_db takes one frame [H, W, 3]; got {a_u8.shape}")
    diff = a_u8.astype(np.float64) - b_u8.astype(np.float64)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(255.0**2 / mse))


def _to_nchw01(frames_u8: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [T, 3, H, W] in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(frames_u8))
    return t.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)


def _ms_ssim_batch(a_u8: np.ndarray, b_u8: np.ndarray) -> tuple[list[float], bool]:
    """Per-frame MS-SSIM (or SSIM for small frames) of uint8 [T, H, W, 3] batches."""
    h, w = a_u8.shape[1:3]
    fallback = min(h, w) < MS_SSIM_MIN_SIDE
    x, y = _to_nchw01(a_u8), _to_nchw01(b_u8)
    with torch.no_grad(), warnings.catch_warnings():
        # pytorch-msssim warns when a side is shorter than its window and skips smoothing there
        warnings.filterwarnings("ignore", message="Skipping Gaussian Smoothing")
        if fallback:
            vals = _ssim(x, y, data_range=1.0, size_average=False, win_size=MS_SSIM_WIN)
        else:
            vals = _ms_ssim(x, y, data_range=1.0, size_average=False, win_size=MS_SSIM_WIN)
    return [float(v) for v in vals], fallback


def ssim_label(used_ssim_fallback: bool) -> str:
    """The honest name of an ``ms_ssim`` value: "SSIM" when the fallback computed it."""
    return "SSIM" if used_ssim_fallback else "MS-SSIM"


def ms_ssim(a_u8: np.ndarray, b_u8: np.ndarray) -> tuple[float, bool]:
    """MS-SSIM of two 8-bit RGB frames ``[H, W, 3]`` -> ``(value, used_ssim_fallback)``.

    Frames whose shorter side is below ``MS_SSIM_MIN_SIDE`` get single-scale SSIM
    and ``used_ssim_fallback=True``.
    """
    _check_pair(a_u8, b_u8, "ms_ssim")
    if a_u8.ndim != 3:
        raise CodecConfigError(f"ms_ssim takes one frame [H, W, 3]; got {a_u8.shape}")
    vals, fallback = _ms_ssim_batch(a_u8[None], b_u8[None])
    return vals[0], fallback


def clip_metrics(orig: np.ndarray, recon: np.ndarray) -> dict[str, Any]:
    """Quality of a reconstructed clip, uint8 ``[T, H, W, 3]`` each.

    Returns ``psnr_db`` (mean of per-frame PSNR, 2 decimals), ``ms_ssim`` (mean,
    4 decimals), ``ms_ssim_is_ssim`` (True when frames were too small for
    MS-SSIM), ``n_frames``, and the per-frame lists ``psnr_db_per_frame`` and
    ``ms_ssim_per_frame`` (unrounded).
    """
    _check_pair(orig, recon, "clip_metrics")
    if orig.ndim != 4 or orig.shape[0] == 0:
        raise CodecConfigError(
            f"clip_metrics needs clips [T, H, W, 3] with T >= 1; got {orig.shape}"
        )
    psnrs = [psnr_db(a, b) for a, b in zip(orig, recon, strict=True)]
    ssims: list[float] = []
    fallback = False
    for s in range(0, orig.shape[0], _MS_SSIM_BATCH):
        vals, fallback = _ms_ssim_batch(orig[s : s + _MS_SSIM_BATCH], recon[s : s + _MS_SSIM_BATCH])
        ssims.extend(vals)
    return {
        "psnr_db": round(float(np.mean(psnrs)), 2),
        "ms_ssim": round(float(np.mean(ssims)), 4),
        "ms_ssim_is_ssim": fallback,
        "n_frames": int(orig.shape[0]),
        "psnr_db_per_frame": psnrs,
        "ms_ssim_per_frame": ssims,
    }


def bits_per_pixel(n_bytes: int, width: int, height: int, n_frames: int) -> float:
    """``n_bytes * 8 / (width * height * n_frames)``."""
    if n_bytes < 0 or width < 1 or height < 1 or n_frames < 1:
        raise CodecConfigError(
            f"bits_per_pixel needs n_bytes >= 0 and positive width, height, n_frames; "
            f"got {n_bytes}, {width}, {height}, {n_frames}"
        )
    return n_bytes * 8.0 / (width * height * n_frames)


def _rd_curve(
    rates: Sequence[float], psnr: Sequence[float], name: str
) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rates, dtype=np.float64)
    p = np.asarray(psnr, dtype=np.float64)
    if r.ndim != 1 or r.shape != p.shape:
        raise CodecConfigError(f"bd_rate: {name} needs equally long 1-D rate and PSNR lists")
    if len(np.unique(p)) < BD_MIN_POINTS:
        raise CodecConfigError(
            f"bd_rate: {name} has {len(np.unique(p))} distinct PSNR values; "
            f"a cubic fit needs at least {BD_MIN_POINTS}"
        )
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(p)) and np.all(r > 0)):
        raise CodecConfigError(f"bd_rate: {name} needs finite PSNR values and positive rates")
    return np.log(r), p


def bd_rate(
    rates_a: Sequence[float],
    psnr_a: Sequence[float],
    rates_b: Sequence[float],
    psnr_b: Sequence[float],
) -> float | None:
    """Bjontegaard delta rate of curve B against anchor A, in percent (negative: B saves bits).

    Each curve's log-rate is fitted as a cubic polynomial of PSNR (at least four
    points, any order); both fits are integrated over the PSNR interval the two
    curves share, and the mean log-rate difference ``d`` gives ``(e^d - 1) * 100``.
    Returns None when the PSNR ranges do not overlap (never extrapolates).
    """
    log_a, p_a = _rd_curve(rates_a, psnr_a, "curve A")
    log_b, p_b = _rd_curve(rates_b, psnr_b, "curve B")
    lo = max(float(p_a.min()), float(p_b.min()))
    hi = min(float(p_a.max()), float(p_b.max()))
    if hi <= lo:
        return None
    # Polynomial.fit maps PSNR onto [-1, 1] first, which keeps the cubic well conditioned
    int_a = Polynomial.fit(p_a, log_a, 3).integ()
    int_b = Polynomial.fit(p_b, log_b, 3).integ()
    mean_diff = ((int_b(hi) - int_b(lo)) - (int_a(hi) - int_a(lo))) / (hi - lo)
    return float((math.exp(mean_diff) - 1.0) * 100.0)


def _perceptual_per_frame(orig: np.ndarray, recon: np.ndarray) -> dict[str, list[float]]:
    """Per-frame DSS and HaarPSI of uint8 clips ``[T, H, W, 3]`` (sides >= PERCEPTUAL_MIN_SIDE)."""
    vals: dict[str, list[float]] = {"dss": [], "haarpsi": []}
    with torch.no_grad():
        for s in range(0, orig.shape[0], _MS_SSIM_BATCH):
            x = _to_nchw01(recon[s : s + _MS_SSIM_BATCH])
            y = _to_nchw01(orig[s : s + _MS_SSIM_BATCH])
            vals["dss"] += dss(x, y).tolist()
            vals["haarpsi"] += haarpsi(x, y).tolist()
    return vals


def perceptual_metrics(orig: np.ndarray, recon: np.ndarray) -> dict[str, float | None]:
    """Mean DSS and HaarPSI (codec.perceptual; 1 = identical) of uint8 clips ``[T, H, W, 3]``
    (or one frame ``[H, W, 3]``), 4 decimals; None for frames whose shorter side is below
    PERCEPTUAL_MIN_SIDE."""
    _check_pair(orig, recon, "perceptual_metrics")
    a = orig[None] if orig.ndim == 3 else orig
    b = recon[None] if recon.ndim == 3 else recon
    if min(a.shape[1:3]) < PERCEPTUAL_MIN_SIDE:
        return {"dss": None, "haarpsi": None}
    vals = _perceptual_per_frame(a, b)
    return {k: round(float(np.mean(v)), 4) for k, v in vals.items()}


class QualityMeter:
    """Quality of a clip measured chunk by chunk (a GOP at a time, so a long clip is never held
    whole): frame-weighted means of PSNR, MS-SSIM (SSIM on small frames) and, where frames are
    large enough, DSS and HaarPSI."""

    def __init__(self) -> None:
        self._per_frame: dict[str, list[float]] = {"psnr_db": [], "ms_ssim": []}
        self._perceptual: dict[str, list[float]] | None = {"dss": [], "haarpsi": []}
        self._ssim_fallback = False

    def add(self, orig: np.ndarray, recon: np.ndarray) -> None:
        """Add the frames of one chunk: uint8 ``[T, H, W, 3]`` source and reconstruction."""
        m = clip_metrics(orig, recon)
        self._per_frame["psnr_db"] += m["psnr_db_per_frame"]
        self._per_frame["ms_ssim"] += m["ms_ssim_per_frame"]
        self._ssim_fallback = self._ssim_fallback or m["ms_ssim_is_ssim"]
        if self._perceptual is None or min(orig.shape[1:3]) < PERCEPTUAL_MIN_SIDE:
            self._perceptual = None
        else:
            for k, v in _perceptual_per_frame(orig, recon).items():
                self._perceptual[k] += v

    @property
    def n_frames(self) -> int:
        return len(self._per_frame["psnr_db"])

    def summary(self) -> dict[str, Any]:
        """``psnr_db`` (2 decimals), ``ms_ssim`` and ``ssim_label`` ("MS-SSIM", or "SSIM" when
        the frames were too small), ``dss`` and ``haarpsi`` (4 decimals; None for small frames),
        ``n_frames``."""
        if not self.n_frames:
            raise CodecConfigError("QualityMeter.summary: no frames were added")
        out: dict[str, Any] = {
            "psnr_db": round(float(np.mean(self._per_frame["psnr_db"])), 2),
            "ms_ssim": round(float(np.mean(self._per_frame["ms_ssim"])), 4),
            "ssim_label": ssim_label(self._ssim_fallback),
        }
        for k in ("dss", "haarpsi"):
            vals = None if self._perceptual is None else self._perceptual[k]
            out[k] = round(float(np.mean(vals)), 4) if vals else None
        out["n_frames"] = self.n_frames
        return out
