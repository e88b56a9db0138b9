"""Initial Gaussians for I-frames: content-aware (superpixels) or random, plus the ROI helpers.

Content-aware initialisation (seed 002, section 3.2A): SLIC superpixels cut the
frame into about ``n`` segments and each segment becomes one Gaussian with the
segment's centroid, a covariance proportional to the segment's pixel-coordinate
covariance, and the segment's mean colour. Because the renderer *sums*
Gaussians (no alpha blending), the colour is amplitude-corrected: a Gaussian's
integral over the plane is ``rgb * 2 pi sqrt(det Sigma)``, and setting that equal
to the segment's colour mass ``mean_colour * area`` makes the overlapping sum
reproduce the local mean colour. Sigma is the segment covariance scaled by
``sigma_scale`` (> 1) so neighbouring Gaussians overlap enough for their sum to
be nearly flat inside uniform regions instead of rippled. One rendering of these
mass-normalised kernels (the coverage) then corrects each colour for what the
overlap sum still misses in its segment: the frame border, where no Gaussians
lie outside, and the residual ripple.

SLIC runs with a low compactness so segments follow colour edges; that gives
Gaussians elongated along edges and cut fitting to 30 dB on carphone by a
third against scikit-image's default compactness (bench/init_convergence.py).

ROI helpers: :func:`load_roi_mask` reads a user mask image, :func:`detect_face_roi`
finds a head-and-shoulders box with a frontal-face cascade.
"""

from __future__ import annotations

import heapq
import math
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from skimage.segmentation import slic
from torch import Tensor

from codec.config import FitConfig
from codec.errors import CodecConfigError
from codec.gaussians import MIN_CHOL_DIAG, SIGMA_CUTOFF_SQ, Gaussians
from codec.render import RenderBackend, get_backend

SIGMA_SCALE = 2.0  # Sigma = SIGMA_SCALE * (segment coordinate covariance)
SLIC_COMPACTNESS = (
    3.0  # SLIC colour/space trade-off in Lab units (skimage default 10; lower hugs edges)
)
# share of a Gaussian's integral inside its 3-sigma ellipse
TRUNCATED_MASS = 1.0 - math.exp(-0.5 * SIGMA_CUTOFF_SQ)
MIN_COVERAGE = 0.25  # the colour correction never divides by less than this
PIXEL_VAR = 1.0 / 12.0  # variance of a uniform pixel footprint, px^2
FACE_MIN_SIDE_FRAC = 0.1  # smallest face searched, as a share of the shorter frame side
FACE_DETECT_MAX_SIDE = 360  # detection runs on frames downscaled to at most this shorter side

FloatImage = NDArray[np.float32]
BoolImage = NDArray[np.bool_]


def _as_numpy_frame(frame: Tensor | NDArray[np.floating]) -> FloatImage:
    arr = frame.detach().cpu().numpy() if isinstance(frame, Tensor) else np.asarray(frame)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise CodecConfigError(f"frame must have shape [H, W, 3]; got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _as_numpy_mask(mask: Tensor | NDArray[np.bool_], shape: tuple[int, int]) -> BoolImage:
    arr = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if arr.shape != shape:
        raise CodecConfigError(f"roi_mask must have shape {shape}; got {arr.shape}")
    return arr.astype(bool)


class _Segments:
    """Pixel lists of the segments of one image part, with exact-count merge/split."""

    def __init__(self, labels: NDArray[np.int64], colours: NDArray[np.float32], width: int) -> None:
        """``labels`` int [H*W] (0 = outside this part, 1.. = segment), ``colours`` [H*W, 3]."""
        self.labels = labels.copy()
        self.colours = colours
        self.width = width
        self.height = labels.size // width
        flat = np.flatnonzero(self.labels > 0)
        order = np.argsort(self.labels[flat], kind="stable")
        sorted_px = flat[order]
        ids, starts = np.unique(self.labels[sorted_px], return_index=True)
        bounds = [*starts.tolist(), sorted_px.size]
        self.pixels: dict[int, NDArray[np.int64]] = {
            int(i): sorted_px[bounds[k] : bounds[k + 1]] for k, i in enumerate(ids)
        }
        self.next_id = int(ids.max()) + 1 if ids.size else 1

    def __len__(self) -> int:
        return len(self.pixels)

    def _sse(self, px: NDArray[np.int64]) -> float:
        c = self.colours[px]
        return float(((c - c.mean(axis=0)) ** 2).sum())

    def _neighbour_labels(self, px: NDArray[np.int64]) -> NDArray[np.int64]:
        y, x = np.divmod(px, self.width)
        cand = [
            (y - 1) * self.width + x,
            (y + 1) * self.width + x,
            px - 1,
            px + 1,
        ]
        ok = [y > 0, y < self.height - 1, x > 0, x < self.width - 1]
        idx = np.concatenate([c[m] for c, m in zip(cand, ok, strict=True)])
        lab = self.labels[idx]
        return lab[lab > 0]

    def merge_to(self, n: int) -> None:
        """Merge the smallest segments into their most-bordering neighbour until ``n`` remain."""
        heap = [(p.size, sid) for sid, p in self.pixels.items()]
        heapq.heapify(heap)
        while len(self.pixels) > n and heap:
            size, sid = heapq.heappop(heap)
            px = self.pixels.get(sid)
            if px is None or px.size != size:
                continue  # stale entry
            nb = self._neighbour_labels(px)
            nb = nb[nb != sid]
            if nb.size:
                vals, counts = np.unique(nb, return_counts=True)
                target = int(vals[np.argmax(counts)])
            else:  # an island: join the segment with the nearest centroid
                c = np.array(np.divmod(px, self.width), dtype=np.float64).mean(axis=1)
                others = [k for k in self.pixels if k != sid]
                cents = np.array(
                    [np.array(np.divmod(self.pixels[k], self.width)).mean(axis=1) for k in others]
                )
                target = others[int(np.argmin(((cents - c) ** 2).sum(axis=1)))]
            merged = np.concatenate([self.pixels[target], px])
            self.labels[px] = target
            del self.pixels[sid]
            self.pixels[target] = merged
            heapq.heappush(heap, (merged.size, target))

    def split_to(self, n: int) -> None:
        """Split the worst-fitting segments (largest colour SSE, then area) in two until ``n`` exist."""
        heap = [(-self._priority(p), sid) for sid, p in self.pixels.items() if p.size > 1]
        heapq.heapify(heap)
        while len(self.pixels) < n:
            if not heap:
                raise CodecConfigError(f"cannot make {n} Gaussians from {len(self.pixels)} pixels")
            _, sid = heapq.heappop(heap)
            px = self.pixels[sid]
            a, b = self._split(px)
            new_id = self.next_id
            self.next_id += 1
            self.pixels[sid] = a
            self.pixels[new_id] = b
            self.labels[b] = new_id
            for k, p in ((sid, a), (new_id, b)):
                if p.size > 1:
                    heapq.heappush(heap, (-self._priority(p), k))

    def _priority(self, px: NDArray[np.int64]) -> float:
        return self._sse(px) + 1e-4 * px.size

    def _split(self, px: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Halve a segment across its major spatial axis (at the median)."""
        y, x = np.divmod(px, self.width)
        pts = np.stack([x, y], axis=1).astype(np.float64)
        pts -= pts.mean(axis=0)
        cov = pts.T @ pts
        _, vecs = np.linalg.eigh(cov)
        proj = pts @ vecs[:, -1]
        order = np.argsort(proj, kind="stable")
        half = px.size // 2
        return px[np.sort(order[:half])], px[np.sort(order[half:])]

    def dense_labels(self) -> NDArray[np.int64]:
        """Labels renumbered 0..K-1 (-1 outside this part), as int [H*W]."""
        out = np.full(self.labels.size, -1, dtype=np.int64)
        for k, px in enumerate(self.pixels.values()):
            out[px] = k
        return out


def _segment_part(img: FloatImage, n: int, mask: BoolImage | None) -> NDArray[np.int64]:
    """Exactly ``n`` segments of ``img`` inside ``mask``: labels int [H*W], 0..n-1, -1 outside."""
    h, w, _ = img.shape
    labels = slic(
        img,
        n_segments=n,
        compactness=SLIC_COMPACTNESS,
        start_label=1,
        mask=mask,
        channel_axis=-1,
        enforce_connectivity=True,
    ).astype(np.int64)
    if mask is not None:
        labels[~mask] = 0
    seg = _Segments(labels.reshape(-1), img.reshape(-1, 3), w)
    if len(seg) > n:
        seg.merge_to(n)
    elif len(seg) < n:
        seg.split_to(n)
    return seg.dense_labels()


def _gaussians_from_labels(
    img: FloatImage, labels: NDArray[np.int64], n: int, sigma_scale: float, backend: RenderBackend
) -> Gaussians:
    """One Gaussian per label 0..n-1 (label -1: no segment) from the segment moments.

    Centre = centroid of the pixel centres (+0.5), Sigma = ``sigma_scale`` * (coordinate
    covariance + a pixel's own 1/12 px^2). Colour = mean colour * A / (2 pi sqrt(det Sigma) m),
    where m is the share of the mass inside 3 sigma, so each Gaussian carries its segment's
    colour mass; then divided by the mean, over the segment, of the coverage (the sum of all
    these mass-normalised kernels, ~1 inside the frame, lower near its border and between
    ripples), so the rendered segment mean matches the true one.
    """
    h, w, _ = img.shape
    ys, xs = np.divmod(np.arange(h * w, dtype=np.float64), w)
    inside = labels >= 0
    lab = labels[inside]
    x, y = xs[inside] + 0.5, ys[inside] + 0.5
    col = img.reshape(-1, 3)[inside].astype(np.float64)

    def seg_sum(v: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.bincount(lab, weights=v, minlength=n).astype(np.float64)

    area = seg_sum(np.ones_like(x))
    if np.any(area <= 0):  # cannot happen: every id keeps its pixels through merge/split
        raise AssertionError("empty segment after merge/split")
    mx, my = seg_sum(x) / area, seg_sum(y) / area
    sxx = sigma_scale * (seg_sum(x * x) / area - mx * mx + PIXEL_VAR)
    syy = sigma_scale * (seg_sum(y * y) / area - my * my + PIXEL_VAR)
    sxy = sigma_scale * (seg_sum(x * y) / area - mx * my)
    mean_rgb = np.stack([seg_sum(col[:, c]) for c in range(3)], axis=1) / area[:, None]

    # Cholesky of Sigma by hand, the diagonal kept >= MIN_CHOL_DIAG.
    l11 = np.sqrt(np.maximum(sxx, MIN_CHOL_DIAG**2))
    l21 = sxy / l11
    l22 = np.sqrt(np.maximum(syy - l21 * l21, MIN_CHOL_DIAG**2))
    amplitude = area / (2.0 * math.pi * l11 * l22 * TRUNCATED_MASS)  # l11 l22 = sqrt(det Sigma)

    def t(a: NDArray[np.float64]) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    xy, chol = t(np.stack([mx, my], axis=1)), t(np.stack([l11, l21, l22], axis=1))
    unit = Gaussians(xy, chol, t(np.repeat(amplitude[:, None], 3, axis=1)))
    coverage = backend.render_nograd(unit, h, w)[..., 0].cpu().numpy().reshape(-1)[inside]
    mean_cov = seg_sum(coverage.astype(np.float64)) / area
    rgb = mean_rgb * (amplitude / np.maximum(mean_cov, MIN_COVERAGE))[:, None]
    return Gaussians(xy_px=xy, chol=chol, rgb=t(rgb))


DETAIL_BLOCK_PX = 8  # detail is measured per block of this many pixels square
DETAIL_STD = 1.5 / 255.0  # a block whose colour varies less than this (std) is flat
DETAIL_FULL_SHARE = 0.25  # frames with at least this share of detailed blocks get the full count
MIN_IFRAME_GAUSSIANS = 32  # the floor for a flat or black frame (flat grey: 255 B, 43 dB at q5)


def detail_share(frame: Tensor | NDArray[np.floating]) -> float:
    """Share of ``DETAIL_BLOCK_PX`` blocks of ``frame`` (float [H, W, 3] in 0..1) whose colour
    varies (std above ``DETAIL_STD`` in some channel); a frame smaller than a block counts whole."""
    img = _as_numpy_frame(frame)
    h, w, _ = img.shape
    b = DETAIL_BLOCK_PX
    if h < b or w < b:
        return float(img.reshape(-1, 3).std(axis=0).max() > DETAIL_STD)
    blocks = img[: h - h % b, : w - w % b].reshape(h // b, b, w // b, b, 3)
    std = blocks.std(axis=(1, 3)).max(axis=-1)  # [H/b, W/b]
    return float((std > DETAIL_STD).mean())


def count_for_detail(n: int, frame: Tensor | NDArray[np.floating]) -> int:
    """The I-frame Gaussian count ``n`` scaled down for a frame with little detail.

    Frames with at least ``DETAIL_FULL_SHARE`` detailed blocks (any camera picture: noise alone
    makes blocks vary) keep ``n``; a flat or black frame gets ``MIN_IFRAME_GAUSSIANS``, so it
    costs a few hundred bytes instead of the full density's ~13 KB at 176x144, and in between
    the count follows the share of detailed blocks."""
    share = detail_share(frame)
    if share >= DETAIL_FULL_SHARE:
        return n
    return max(min(n, MIN_IFRAME_GAUSSIANS), round(n * share / DETAIL_FULL_SHARE))


# Rate-distortion Gaussian budget (issue 14, item 1). A Gaussian of spacing s (one per s x s
# pixels) reproduces a block about as well as a Gaussian blur of the frame at sigma
# BUDGET_BLUR_PER_SPACING * s does, times BUDGET_FIT_GAIN (a fitted, anisotropic Gaussian beats
# a blur: the factor is calibrated on the three development clips, BENCHMARKS.md issue 14).
# Per block the spacing with the lowest D + lambda * R wins; the budget is the sum of the
# blocks' counts, so it follows both the content and the level's lambda.
BUDGET_BLOCK_PX = 16
BUDGET_SPACINGS_PX = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
BUDGET_BLUR_PER_SPACING = 0.5
BUDGET_FIT_GAIN = 0.4
MAX_BUDGET_PER_PX = 0.25  # never more than one Gaussian per 4 pixels
PERSIST_POOL_PX = 4  # block_persistence compares the means of 4x4-pixel cells (divides 16)
BUDGET_UPDATE_LAMBDA = 30.0  # lambda at which a changed block's Gaussian costs half an update


def block_persistence(frames: NDArray[np.uint8], tau: float) -> NDArray[np.float64]:
    """How many frames of the GOP each block of the I-frame ``frames[0]`` lives for: float64
    [By, Bx] (BUDGET_BLOCK_PX blocks), ``1 + sum_t rho_t`` where ``rho_t = exp(-m_t / tau)`` and
    ``m_t`` is the largest mean squared difference (8-bit levels^2 per pixel and channel) of the
    block's 4x4-cell means between ``frames[0]`` and any frame up to ``t`` (``frames`` uint8 [T, H, W, 3]). A static
    block scores T: its detail, once sent, is shown in every frame for free; a block that changes
    at once scores about 1. The analogue of x264's macroblock tree for the Gaussian budget."""
    t_count, h, w, _ = frames.shape
    b = BUDGET_BLOCK_PX
    by, bx = -(-h // b), -(-w // b)
    pad = ((0, by * b - h), (0, bx * b - w))
    ones = np.pad(np.ones((h, w)), pad).reshape(by, b, bx, b).sum(axis=(1, 3))
    c = PERSIST_POOL_PX
    cells = b // c

    def low(frame: NDArray[np.uint8]) -> NDArray[np.float64]:
        # means of c x c cells (inside each block) first, so sensor noise (which the P-frames
        # leave alone) does not count as change: its variance drops c^2-fold, a moved edge's
        # does not. [by * cells, bx * cells, 3]
        a = np.pad(frame.astype(np.float64), (*pad, (0, 0)))
        return a.reshape(by * cells, c, bx * cells, c, 3).mean(axis=(1, 3))

    first = low(frames[0])
    worst = np.zeros((by, bx))
    total = np.ones((by, bx))
    for t in range(1, t_count):
        d2 = ((low(frames[t]) - first) ** 2).mean(axis=2) * (c * c)  # per cell, summed over px
        m = d2.reshape(by, cells, bx, cells).sum(axis=(1, 3)) / ones
        worst = np.maximum(worst, m)
        total += np.exp(-worst / tau)
    return total


def block_distortion(
    frame: Tensor | NDArray[np.floating], spacings: tuple[float, ...] = BUDGET_SPACINGS_PX
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per block and spacing, the squared error (8-bit levels^2 summed over pixels and channels)
    of blurring ``frame`` (float [H, W, 3] in 0..1) at that spacing: float64 [S, By, Bx], and the
    blocks' areas in pixels, float64 [By, Bx] (edge blocks are smaller)."""
    import cv2  # local import: cv2 is heavy

    img = np.clip(_as_numpy_frame(frame), 0.0, 1.0) * 255.0
    h, w, _ = img.shape
    b = BUDGET_BLOCK_PX
    by, bx = -(-h // b), -(-w // b)
    pad_h, pad_w = by * b - h, bx * b - w

    def block_sum(a: NDArray[np.float32]) -> NDArray[np.float64]:
        a = np.pad(a.astype(np.float64), ((0, pad_h), (0, pad_w)))
        return a.reshape(by, b, bx, b).sum(axis=(1, 3))

    out = np.empty((len(spacings), by, bx), dtype=np.float64)
    for k, s in enumerate(spacings):
        sigma = BUDGET_BLUR_PER_SPACING * s
        blurred = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
        out[k] = block_sum(((img - blurred) ** 2).sum(axis=2))
    return out, block_sum(np.ones((h, w), np.float32))


def rd_gaussian_count(
    frame: Tensor | NDArray[np.floating],
    lam_levels2_per_bit: float,
    bits_per_gaussian: float,
    *,
    fit_gain: float = BUDGET_FIT_GAIN,
    n_max: int | None = None,
    weight: NDArray[np.float64] | None = None,
    bits_weight: NDArray[np.float64] | None = None,
) -> int:
    """The I-frame Gaussian budget of ``frame`` (float [H, W, 3] in 0..1) at a level's lambda.

    Per ``BUDGET_BLOCK_PX`` block, picks the spacing s in ``BUDGET_SPACINGS_PX`` minimising
    ``fit_gain * D_blur(s) + lambda * bits_per_gaussian * area / s^2`` (J = D + lambda R with the
    same lambda, in levels^2 per bit, as the P-frame choices of codec.rdo) and returns the sum of
    ``area / s^2`` over blocks: a flat block gets one Gaussian per 32 x 32 pixels, a textured one
    up to one per 4 pixels. ``weight`` (float64 [By, Bx], default 1) scales each block's D: how
    many frames its detail is worth (:func:`block_persistence`); ``bits_weight`` (float64
    [By, Bx], default 1) scales each block's bits per Gaussian (the P-frame updates a Gaussian
    of a moving block will cost). Clamped to
    [MIN_IFRAME_GAUSSIANS, min(n_max, MAX_BUDGET_PER_PX * H*W)]."""
    if lam_levels2_per_bit <= 0 or bits_per_gaussian <= 0 or fit_gain <= 0:
        raise CodecConfigError(
            "rd_gaussian_count needs lambda, bits_per_gaussian and fit_gain > 0; got "
            f"{lam_levels2_per_bit}, {bits_per_gaussian}, {fit_gain}"
        )
    dist, area = block_distortion(frame)
    spacing = np.asarray(BUDGET_SPACINGS_PX, dtype=np.float64)[:, None, None]
    count = area[None] / spacing**2  # [S, By, Bx]
    if weight is not None:
        dist = dist * weight[None]
    bits = bits_per_gaussian if bits_weight is None else bits_per_gaussian * bits_weight[None]
    cost = fit_gain * dist + lam_levels2_per_bit * bits * count
    best = np.argmin(cost, axis=0)
    n = float(np.take_along_axis(count, best[None], axis=0).sum())
    h, w = _as_numpy_frame(frame).shape[:2]
    top = int(MAX_BUDGET_PER_PX * h * w)
    if n_max is not None:
        top = min(top, n_max)
    return int(max(min(MIN_IFRAME_GAUSSIANS, h * w), min(round(n), max(top, 1))))


# Estimated bits of one intra-coded Gaussian at a chol/colour bit depth: 12 + 4.5 * bits
# (carphone fast q1-q4 I-frames: 37 bits at 5, 40-42 at 6; positions cost ~10 of them)
GAUSSIAN_BITS_BASE, GAUSSIAN_BITS_PER_DEPTH = 12.0, 4.5


def iframe_budget(
    frame: Tensor | NDArray[np.floating],
    fit: FitConfig,
    attr_bits: int,
    n_density: int,
    following: NDArray[np.uint8] | None = None,
) -> int:
    """The I-frame's Gaussian count under ``fit.budget``: ``"density"`` scales ``n_density``
    down on flat frames (:func:`count_for_detail`); ``"rd"`` is :func:`rd_gaussian_count` at
    ``fit.pframe_rd_lambda`` (when above 0) for Gaussians of ``attr_bits``-bit attributes, with
    each block's distortion weighted by its :func:`block_persistence` over ``following`` (uint8
    [T, H, W, 3]: this frame and the rest of its GOP) to the power ``fit.budget_persistence``,
    and its bits per Gaussian by ``1 + kappa * (T - persistence)``: an update of the Gaussian
    per frame its block has changed, ``kappa = fit.budget_update_cost / (1 + lambda /
    BUDGET_UPDATE_LAMBDA)`` of an intra Gaussian's bits (a high lambda, a low level, updates
    rarely: its P-frames let the picture degrade instead)."""
    if fit.budget == "density" or fit.pframe_rd_lambda <= 0:
        return count_for_detail(n_density, frame)
    bits = GAUSSIAN_BITS_BASE + GAUSSIAN_BITS_PER_DEPTH * attr_bits
    weight = bits_weight = None
    gop_aware = fit.budget_persistence > 0 or fit.budget_update_cost > 0
    if gop_aware and following is not None and len(following) > 1:
        persist = block_persistence(following, fit.budget_persistence_tau)
        weight = persist**fit.budget_persistence
        kappa = fit.budget_update_cost / (1.0 + fit.pframe_rd_lambda / BUDGET_UPDATE_LAMBDA)
        bits_weight = 1.0 + kappa * (len(following) - persist)
    return rd_gaussian_count(
        frame,
        fit.pframe_rd_lambda,
        bits,
        fit_gain=fit.budget_fit_gain,
        weight=weight,
        bits_weight=bits_weight,
    )


def superpixel_init(
    frame: Tensor | NDArray[np.floating],
    n: int,
    *,
    roi_mask: Tensor | NDArray[np.bool_] | None = None,
    roi_share: float = 0.5,
    generator: torch.Generator | None = None,
    sigma_scale: float = SIGMA_SCALE,
    backend: RenderBackend | None = None,
) -> Gaussians:
    """Exactly ``n`` Gaussians from SLIC superpixels of ``frame`` (float32 [H, W, 3] in [0, 1]).

    With ``roi_mask`` (bool [H, W]), ``round(roi_share * n)`` Gaussians come from superpixels
    of the ROI and the rest from the background, each part segmented on its own (ROI rows
    first). SLIC gives roughly the requested count; the exact count comes from merging the
    smallest segments or splitting the worst-fitting ones. ``backend`` (default ``torch``)
    renders the coverage once for the colour correction. The procedure is deterministic, so
    ``generator`` is accepted only for symmetry with :func:`random_init`. Tensors are float32
    on the CPU.
    """
    del generator  # deterministic: SLIC seeds on a grid (and with a fixed seed under a mask)
    img = _as_numpy_frame(frame)
    h, w, _ = img.shape
    if n < 1:
        raise CodecConfigError(f"n={n} must be at least 1")
    if n > h * w:
        raise CodecConfigError(f"n={n} Gaussians is more than the frame's {h * w} pixels")
    if not (0.0 <= roi_share <= 1.0):
        raise CodecConfigError(f"roi_share={roi_share} is out of range; use a value in [0, 1]")
    if sigma_scale <= 0:
        raise CodecConfigError(f"sigma_scale={sigma_scale} must be positive")
    img = np.clip(img, 0.0, 1.0)
    if backend is None:
        backend = get_backend("torch")

    roi = _as_numpy_mask(roi_mask, (h, w)) if roi_mask is not None else None
    if roi is None or not roi.any() or roi.all():
        labels = _segment_part(img, n, None)
    else:
        n_roi_px, n_bg_px = int(roi.sum()), int((~roi).sum())
        n_roi = min(round(roi_share * n), n_roi_px)
        n_bg = n - n_roi
        if n_bg > n_bg_px:  # the background is too small for its share: give the rest to the ROI
            n_bg = n_bg_px
            n_roi = n - n_bg
        labels = np.full(h * w, -1, dtype=np.int64)
        offset = 0
        for mask, count in ((roi, n_roi), (~roi, n_bg)):
            if count > 0:
                part = _segment_part(img, count, mask)
                labels[part >= 0] = part[part >= 0] + offset
                offset += count
    return _gaussians_from_labels(img, labels, n, sigma_scale, backend)


def random_init(
    height: int, width: int, n: int, *, generator: torch.Generator | None = None
) -> Gaussians:
    """GaussianImage's random start: uniform centres, small random Cholesky factors, random colours.

    ``l11, l22`` in [0.5, 1.5) px and ``l21`` in [0, 1) px (GaussianImage adds 0.5 to U(0, 1)
    on the diagonal), colours U(0, 1). float32 on the CPU, deterministic given ``generator``.
    """
    if n < 1 or height < 1 or width < 1:
        raise CodecConfigError(
            f"random_init needs n, height, width >= 1; got {n}, {height}, {width}"
        )
    u = torch.rand(n, 8, generator=generator)
    xy = u[:, 0:2] * torch.tensor([float(width), float(height)])
    chol = u[:, 2:5] + torch.tensor([0.5, 0.0, 0.5])
    rgb = u[:, 5:8].contiguous()
    return Gaussians(xy_px=xy, chol=chol, rgb=rgb)


def load_roi_mask(path: str | Path, height: int, width: int) -> Tensor:
    """ROI mask bool [height, width] from an image file (nonzero = ROI), resized (nearest) if needed.

    Greyscale and colour images count a pixel as ROI when any channel is nonzero; an image with
    a varying alpha channel uses the alpha channel. Raises :class:`CodecConfigError` when the
    file is missing or not an image cv2 can read.
    """
    import cv2  # local import: cv2 is heavy and only needed here

    p = Path(path)
    if not p.is_file():
        raise CodecConfigError(f"ROI mask file {str(p)!r} does not exist")
    if height < 1 or width < 1:
        raise CodecConfigError(f"ROI mask size must be positive; got {width}x{height}")
    data = np.fromfile(p, dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise CodecConfigError(f"ROI mask file {str(p)!r} is not an image OpenCV can read")
    if img.ndim == 3 and img.shape[2] == 4 and np.ptp(img[:, :, 3]) > 0:
        mask = img[:, :, 3] > 0
    elif img.ndim == 3:
        mask = (img[:, :, :3] != 0).any(axis=2)
    else:
        mask = img != 0
    if mask.shape != (height, width):
        resized = cv2.resize(
            mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST
        )
        mask = resized > 0
    return torch.from_numpy(np.ascontiguousarray(mask))


def _face_boxes(gray: NDArray[np.float64]) -> list[tuple[int, int, int, int]]:
    """Frontal faces as (x, y, w, h) boxes in ``gray``'s pixels.

    Uses OpenCV's Haar cascade when this OpenCV build still ships it (``cv2.data.haarcascades``
    and ``cv2.CascadeClassifier``; OpenCV 5 wheels ship neither), otherwise the LBP frontal-face
    cascade that scikit-image ships with its own detector.
    """
    import cv2

    h, w = gray.shape
    min_side = max(12, int(FACE_MIN_SIDE_FRAC * min(h, w)))
    haar_dir = getattr(getattr(cv2, "data", None), "haarcascades", None)
    haar = Path(haar_dir, "haarcascade_frontalface_default.xml") if haar_dir else None
    if haar is not None and haar.is_file() and hasattr(cv2, "CascadeClassifier"):
        clf = cv2.CascadeClassifier(str(haar))
        u8 = np.clip(gray * 255.0, 0, 255).astype(np.uint8)
        found = clf.detectMultiScale(
            u8, scaleFactor=1.1, minNeighbors=4, minSize=(min_side, min_side)
        )
        return [tuple(int(v) for v in box) for box in found]  # type: ignore[misc]

    from skimage.data import lbp_frontal_face_cascade_filename
    from skimage.feature import Cascade

    det = Cascade(lbp_frontal_face_cascade_filename())
    found = det.detect_multi_scale(
        img=gray, scale_factor=1.2, step_ratio=1, min_size=(min_side, min_side), max_size=(h, w)
    )
    return [(int(d["c"]), int(d["r"]), int(d["width"]), int(d["height"])) for d in found]


def detect_face_roi(frame_u8: NDArray[np.uint8]) -> NDArray[np.bool_] | None:
    """Head-and-shoulders ROI (bool [H, W]) around every frontal face in ``frame_u8`` (uint8 [H, W, 3]).

    Each face box is widened to 2.2x its width and extended from half a face above to 2.5
    faces below its top (hair to shoulders). Returns None when no face is found.
    """
    from skimage.color import rgb2gray
    from skimage.transform import rescale

    arr = np.asarray(frame_u8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise CodecConfigError(f"frame must have shape [H, W, 3]; got {arr.shape}")
    h, w, _ = arr.shape
    gray = rgb2gray(arr)
    factor = min(1.0, FACE_DETECT_MAX_SIDE / min(h, w))
    if factor < 1.0:
        gray = rescale(gray, factor, anti_aliasing=True)
    boxes = _face_boxes(gray)
    if not boxes:
        return None
    mask = np.zeros((h, w), dtype=bool)
    for bx, by, bw, bh in boxes:
        x, y, fw, fh = bx / factor, by / factor, bw / factor, bh / factor
        x0 = max(0, int(math.floor(x - 0.6 * fw)))
        x1 = min(w, int(math.ceil(x + 1.6 * fw)))
        y0 = max(0, int(math.floor(y - 0.5 * fh)))
        y1 = min(h, int(math.ceil(y + 2.5 * fh)))
        mask[y0:y1, x0:x1] = True
    return mask
