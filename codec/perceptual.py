"""Full-reference perceptual metrics without learned weights: DSS and HaarPSI (1 = identical).

Both are written here from their papers, so the project needs neither ``piq`` nor ``torchvision``
(which ``piq`` requires, and which the guide forbids):

- **DSS**, DCT subband similarity: A. Balanov, A. Schwartz, Y. Moshe, N. Peleg, "Image quality
  assessment based on DCT subband similarity", ICIP 2015. The luminance is cut into 8x8 blocks;
  each of the 64 DCT coefficients over all blocks forms a subband image. Per subband, the local
  standard deviations (3x3 Gaussian window, sigma 1.5) of the two images are compared,
  ``(2 s_x s_y + C) / (s_x^2 + s_y^2 + C)`` (C = 1000 for the DC subband, 300 for the others); the
  DC subband also multiplies in the structure term ``(s_xy + C) / (s_x s_y + C)``. Each map is
  pooled by the mean of its worst 5 %, and the subbands are combined with a Gaussian weight over
  their frequency (sigma 1.55, weights below 0.01 dropped).
- **HaarPSI**, Haar wavelet-based perceptual similarity index: R. Reisenhofer, S. Bosse,
  G. Kutyniok, T. Wiegand, "A Haar wavelet-based perceptual similarity index for image quality
  assessment", Signal Processing: Image Communication 61 (2018) 33-43. Images are subsampled 2x;
  horizontal and vertical Haar filters of sizes 2, 4 and 8 give local similarities
  ``(2 a b + C) / (a^2 + b^2 + C)`` of coefficient magnitudes (C = 30) at the two finest scales,
  weighted by the larger coarsest-scale magnitude of either image, plus a chroma term on the
  2x2-averaged I and Q channels; the weighted mean of ``sigmoid(alpha * sim)`` (alpha = 4.2) is
  mapped back through ``(logit(.) / alpha)^2``.

Conventions where the papers leave a choice follow the authors' MATLAB code as ``piq`` 0.8.0
ports it (so figures recorded with ``piq`` stay comparable; tests/codec/test_perceptual.py holds
``piq`` 0.8.0's values on fixed images): YIQ luminance scaled to [0, 255], zero padding,
HaarPSI's 2x subsampling by 2x2 means with one zero row/column added to odd sides, and the
Haar filters' even-size alignment (``k/2 - 1`` before, ``k/2`` after). Two deliberate
differences, both only where ``piq`` returns NaN or infinity: DSS pools at least one value per
subband on frames with fewer than 10 blocks, and HaarPSI of two all-black images is 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from codec.errors import CodecConfigError

# RGB -> YIQ (NTSC), rows Y, I, Q
_YIQ = (
    (0.299, 0.587, 0.114),
    (0.5959, -0.2746, -0.3213),
    (0.2115, -0.5227, 0.3112),
)

DSS_BLOCK = 8  # DCT block size
DSS_WEIGHT_SIGMA = 1.55  # frequency weighting of the subbands
DSS_WINDOW = 3  # local-variance window (Gaussian)
DSS_WINDOW_SIGMA = 1.5
DSS_C_DC, DSS_C_AC = 1000.0, 300.0  # stabilising constants, for values in [0, 255]
DSS_WORST_SHARE = 0.05  # pooling: mean of the worst 5 % of a subband's similarity map
DSS_MIN_WEIGHT = 1e-2  # subbands with a smaller (unnormalised) weight are skipped

HAARPSI_SCALES = 3  # Haar filters of sizes 2, 4, 8
HAARPSI_C = 30.0
HAARPSI_ALPHA = 4.2
HAARPSI_MIN_SIDE = 2 ** (HAARPSI_SCALES + 1)  # 16: the largest Haar filter must fit


def _check(x: torch.Tensor, y: torch.Tensor, what: str, min_side: int) -> None:
    if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
        raise CodecConfigError(
            f"{what} needs two RGB batches [N, 3, H, W] of equal shape; got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    if min(x.shape[-2:]) < min_side:
        raise CodecConfigError(
            f"{what} needs frames of at least {min_side}x{min_side} px; got {tuple(x.shape[-2:])}"
        )


def rgb_to_yiq(x: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] RGB -> [N, 3, H, W] YIQ (same scale)."""
    m = torch.tensor(_YIQ, dtype=x.dtype, device=x.device)  # [3 out, 3 in]
    return torch.einsum("oc,nchw->nohw", m, x)


def _gaussian_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """Normalised 2-D Gaussian [1, 1, size, size]."""
    c = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2.0
    g = torch.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2.0 * sigma**2))
    return (g / g.sum()).view(1, 1, size, size)


def _dct_matrix(n: int, like: torch.Tensor) -> torch.Tensor:
    """Orthonormal DCT-II matrix [n, n]: row k is frequency k."""
    k = torch.arange(n, dtype=like.dtype, device=like.device)[:, None]
    i = torch.arange(n, dtype=like.dtype, device=like.device)[None, :]
    d = torch.cos(math.pi * (2.0 * i + 1.0) * k / (2.0 * n)) * math.sqrt(2.0 / n)
    d[0] = math.sqrt(1.0 / n)
    return d


def _subbands(lum: torch.Tensor, n: int) -> torch.Tensor:
    """Block DCT of [N, H, W] (H, W multiples of n) -> subband images [N, n, n, H/n, W/n]."""
    b, h, w = lum.shape
    blocks = lum.reshape(b, h // n, n, w // n, n).permute(0, 1, 3, 2, 4)  # [N, H/n, W/n, n, n]
    d = _dct_matrix(n, lum)
    coeffs = d @ blocks @ d.T  # [N, H/n, W/n, n (vertical freq), n (horizontal freq)]
    return coeffs.permute(0, 3, 4, 1, 2)


def _worst_mean(m: torch.Tensor, share: float) -> torch.Tensor:
    """Mean of the smallest ``share`` of each map [N, h, w] -> [N] (at least one value)."""
    flat = m.flatten(1)
    k = max(1, round(share * flat.shape[1]))
    return torch.topk(flat, k, dim=1, largest=False, sorted=False).values.mean(dim=1)


def _subband_similarity(
    x: torch.Tensor, y: torch.Tensor, window: torch.Tensor, c: float, dc: bool
) -> torch.Tensor:
    """Pooled similarity of two subband images [N, h, w] -> [N]."""
    pad = window.shape[-1] // 2
    xs, ys = x[:, None], y[:, None]  # [N, 1, h, w]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, padding=pad)

    mu_x, mu_y = blur(xs), blur(ys)
    var_x = (blur(xs * xs) - mu_x**2).clamp_min(0.0)
    var_y = (blur(ys * ys) - mu_y**2).clamp_min(0.0)
    sd_xy = torch.sqrt(var_x * var_y)  # s_x s_y
    variance_term = (2.0 * sd_xy + c) / (var_x + var_y + c)
    sim = _worst_mean(variance_term[:, 0], DSS_WORST_SHARE)
    if dc:
        cov = blur(xs * ys) - mu_x * mu_y
        structure_term = (cov + c) / (sd_xy + c)
        sim = sim * _worst_mean(structure_term[:, 0], DSS_WORST_SHARE)
    return sim


def dss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DSS of RGB batches ``x``, ``y`` [N, 3, H, W] in [0, 1] (H, W >= 8) -> [N], 1 = identical.

    Symmetric in ``x`` and ``y``; frames are cropped to multiples of 8 (bottom, right)."""
    _check(x, y, "dss", DSS_BLOCK)
    n = DSS_BLOCK
    h, w = (x.shape[-2] // n) * n, (x.shape[-1] // n) * n
    lum_x = rgb_to_yiq(x * 255.0)[:, 0, :h, :w]  # [N, h, w], luminance in [0, 255]
    lum_y = rgb_to_yiq(y * 255.0)[:, 0, :h, :w]
    sub_x, sub_y = _subbands(lum_x, n), _subbands(lum_y, n)  # [N, n, n, h/n, w/n]
    f = torch.arange(n, dtype=x.dtype, device=x.device) + 0.5
    weight = torch.exp(-(f[:, None] ** 2 + f[None, :] ** 2) / (2.0 * DSS_WEIGHT_SIGMA**2))
    weight = torch.where(weight < DSS_MIN_WEIGHT, torch.zeros_like(weight), weight)  # [n, n]
    window = _gaussian_window(DSS_WINDOW, DSS_WINDOW_SIGMA, x)
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for u in range(n):
        for v in range(n):
            if weight[u, v] == 0:
                continue
            dc = u == 0 and v == 0
            sim = _subband_similarity(
                sub_x[:, u, v], sub_y[:, u, v], window, DSS_C_DC if dc else DSS_C_AC, dc
            )
            total = total + weight[u, v] * sim
    return total / weight.sum()


def _haar_coefficients(lum: torch.Tensor) -> torch.Tensor:
    """Haar responses of luminance [N, 1, H, W] -> [N, 2 * scales, H, W], channels (scale 1
    horizontal-edge, scale 1 vertical-edge, scale 2 ..., ...)."""
    out = []
    for scale in range(1, HAARPSI_SCALES + 1):
        k = 2**scale
        h = torch.full((k, k), 1.0 / k, dtype=lum.dtype, device=lum.device)
        h[k // 2 :] *= -1.0  # top half minus bottom half
        kernels = torch.stack([h, h.T])[:, None]  # [2, 1, k, k]
        before, after = k // 2 - 1, k // 2  # the alignment of MATLAB's conv2(..., 'same')
        padded = F.pad(lum, (before, after, before, after))
        out.append(F.conv2d(padded, kernels))
    return torch.cat(out, dim=1)


def _similarity(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    return (2.0 * a * b + c) / (a * a + b * b + c)


def haarpsi(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """HaarPSI of RGB batches ``x``, ``y`` [N, 3, H, W] in [0, 1] (H, W >= 16) -> [N],
    1 = identical. Symmetric in ``x`` and ``y``."""
    _check(x, y, "haarpsi", HAARPSI_MIN_SIDE)
    pad_odd = max(x.shape[-2] % 2, x.shape[-1] % 2)
    # 2x subsampling by 2x2 means (the viewing-distance step of the paper): [N, 3, H', W']
    yiq_x = F.avg_pool2d(F.pad(rgb_to_yiq(x * 255.0), (0, pad_odd, 0, pad_odd)), 2)
    yiq_y = F.avg_pool2d(F.pad(rgb_to_yiq(y * 255.0), (0, pad_odd, 0, pad_odd)), 2)
    cx = _haar_coefficients(yiq_x[:, :1]).abs()  # [N, 6, H', W']
    cy = _haar_coefficients(yiq_y[:, :1]).abs()
    last = 2 * (HAARPSI_SCALES - 1)
    weights = torch.maximum(cx[:, last:], cy[:, last:])  # [N, 2, H', W'] coarsest scale
    sims = [
        # orientation o at the two finest scales (channels o and o + 2)
        (
            _similarity(cx[:, o], cy[:, o], HAARPSI_C)
            + _similarity(cx[:, o + 2], cy[:, o + 2], HAARPSI_C)
        )
        / 2.0
        for o in range(2)
    ]
    # chroma: |2x2 means| of I and Q (one zero row/column after), weighted like the luminance
    iq_x = F.avg_pool2d(F.pad(yiq_x[:, 1:], (0, 1, 0, 1)), 2, stride=1).abs()  # [N, 2, H', W']
    iq_y = F.avg_pool2d(F.pad(yiq_y[:, 1:], (0, 1, 0, 1)), 2, stride=1).abs()
    sims.append(_similarity(iq_x, iq_y, HAARPSI_C).mean(dim=1))
    sim = torch.stack(sims, dim=1)  # [N, 3, H', W']
    w = torch.cat([weights, weights.mean(dim=1, keepdim=True)], dim=1)  # [N, 3, H', W']
    num = (torch.sigmoid(HAARPSI_ALPHA * sim) * w).sum(dim=(1, 2, 3))
    den = w.sum(dim=(1, 2, 3))
    # two all-black frames have no weight anywhere: nothing differs
    score = torch.where(
        den > 0, num / den.clamp_min(1e-30), torch.sigmoid(x.new_tensor(HAARPSI_ALPHA))
    )
    return (torch.logit(score) / HAARPSI_ALPHA) ** 2
