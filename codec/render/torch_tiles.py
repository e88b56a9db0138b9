"""Tile-binned renderer in pure PyTorch (CPU and CUDA): the ``torch`` backend.

Binning. Every Gaussian gets an integer pixel box: the pixels whose centres lie
inside the axis-aligned box of its 3-sigma ellipse, ``|dx| <= 3 sqrt(Sxx)`` and
``|dy| <= 3 sqrt(Syy)`` (:func:`codec.gaussians.radius_3sigma`), widened by a tiny
margin against rounding and clipped to the frame. :meth:`TorchTileBackend.render`
turns the boxes into (gaussian, 16x16 tile) pairs (a Gaussian's tiles are numbered
from the running sum of its tile count, and a chunk of pair numbers is mapped back
to Gaussian and tile with ``searchsorted``), evaluates each pair on its tile's 256
pixels and scatter-adds the results into the image, chunk by chunk, inside a
custom autograd function whose backward recomputes the chunks, so memory stays
bounded by the chunk size however many pairs there are.
:meth:`TorchTileBackend.render_nograd` instead evaluates each Gaussian on a patch
just covering its box (Gaussians bucketed by patch size so that each bucket is one
batched evaluation: about 5x fewer pixel evaluations than whole tiles for small
Gaussians) and scatter-adds in an order fixed by the input, so its bits are
reproducible. :meth:`TorchTileBackend.gaussians_touching` prunes boxes without any
masked pixel with a summed-area table, then tests the patch pixels.

Why it is exact. The kernel is zero wherever ``m = d^T Sigma^-1 d > 9``, and a
pixel outside the 3-sigma box has ``m >= dx^2 / Sxx > 9`` (or the same in y), so
every non-zero term of the dense sum lies inside the box and is evaluated, and
every pair is kept: there is no per-tile cap on the number of Gaussians. Pixels
outside a Gaussian's box are forced to zero, and ``m`` is computed with the same
floating-point operations in the same order as :mod:`codec.render.dense`, so both
paths here take the same truncation decisions as the dense reference (bit for
bit) and differ from it only in the order of the final sums. (For a nearly
singular Sigma, rounding in ``m`` can exceed the box margin; then the dense sum
may include a few pixels just outside the box that these paths leave out, the
same ones in every path here.)

Degenerate Gaussians (non-finite centre or Cholesky factor, or a covariance whose
determinant is not positive) are dropped; a huge box is clipped to the frame.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from codec.gaussians import SIGMA_CUTOFF_SQ, Gaussians, conic, covariance
from codec.render.base import TILE

__all__ = ["TorchTileBackend", "pixel_boxes"]

_BOX_REL_MARGIN = 1e-3  # relative widening of the 3-sigma box against rounding in m
_BOX_ABS_MARGIN = 1e-2  # px
_PAIR_CHUNK = 2048  # (gaussian, tile) pairs evaluated at once: 2048 * 256 px
_PATCH_CHUNK = 1 << 18  # pixel evaluations at once in the patch path


def pixel_boxes(g: Gaussians, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Drawable Gaussians and their clipped pixel boxes.

    Returns ``idx`` (int64 [M], ascending rows of ``g`` with at least one pixel in
    the frame and a valid covariance) and ``box`` (int64 [M, 4]: first column, last
    column, first row, last row, inclusive, inside the frame).
    """
    with torch.no_grad():
        xy = g.xy_px.detach()
        chol = g.chol.detach()
        s = covariance(chol)  # [N, 3] in the input dtype, as conic() computes it
        det = s[:, 0] * s[:, 2] - s[:, 1] * s[:, 1]
        ok = torch.isfinite(xy).all(dim=1) & torch.isfinite(conic(chol)).all(dim=1) & (det > 0)
        s64 = covariance(chol.double())
        r = 3.0 * torch.stack([s64[:, 0], s64[:, 2]], dim=1).sqrt()  # [N, 2] (rx, ry)
        r = r * (1.0 + _BOX_REL_MARGIN) + _BOX_ABS_MARGIN
        centre = xy.double()  # [N, 2]
        # pixel j is in the box when |j + 0.5 - c| <= r
        lo = torch.ceil(centre - r - 0.5)  # [N, 2]
        hi = torch.floor(centre + r - 0.5)
        ok &= torch.isfinite(lo).all(dim=1) & torch.isfinite(hi).all(dim=1)
        lo = torch.where(ok[:, None], lo, torch.ones_like(lo))
        hi = torch.where(ok[:, None], hi, torch.zeros_like(hi))
        x0 = lo[:, 0].clamp(0, width)
        x1 = hi[:, 0].clamp(-1, width - 1)
        y0 = lo[:, 1].clamp(0, height)
        y1 = hi[:, 1].clamp(-1, height - 1)
        keep = (x0 <= x1) & (y0 <= y1)
        idx = torch.nonzero(keep).flatten()
        box = torch.stack([x0, x1, y0, y1], dim=1)[idx].long()
        return idx, box


def _log_kernel(
    xy: Tensor, abc: Tensor, box: Tensor, cols: Tensor, rows: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """h = -m / 2 on a grid of pixels per Gaussian, -inf outside the Gaussian's box.

    ``xy`` [K, 2], ``abc`` [K, 3] conic, ``box`` [K, 4], ``cols`` int64 [PW, K] and
    ``rows`` int64 [PH, K] pixel indices. Returns h [PH, PW, K], dx [PW, K], dy [PH, K].
    The Gaussian axis is last so that every elementwise op runs over long contiguous
    rows. The operations and their order are those of
    :func:`codec.render.dense.mahalanobis_sq` on a conic pre-scaled by -1/2; scaling
    by a power of two commutes with rounding, so h is exactly -m/2 for the dense m.
    """
    dx = (cols.to(xy.dtype) + 0.5) - xy[:, 0]  # [PW, K]
    dy = (rows.to(xy.dtype) + 0.5) - xy[:, 1]  # [PH, K]
    a, b, c = (-0.5 * abc).unbind(1)  # [K]
    t1 = a * dx * dx  # [PW, K]
    t1.masked_fill_((cols < box[:, 0]) | (cols > box[:, 1]), -math.inf)
    b2dx = 2 * b * dx  # [PW, K]
    t3 = c * dy * dy  # [PH, K]
    t3.masked_fill_((rows < box[:, 2]) | (rows > box[:, 3]), -math.inf)
    h = t1[None] + b2dx[None] * dy[:, None]  # [PH, PW, K]
    h += t3[:, None]
    return h, dx, dy


_EXP_FLOOR = -80.0  # stand-in for -inf before exp: exp(-inf) and exp of denormal results are slow
_W_ZERO_BELOW = 1e-30  # exp(_EXP_FLOOR) ~ 1.8e-35 < this << exp(-4.5) ~ 0.011


def _weights(h: Tensor) -> Tensor:
    """Truncated kernel exp(h), zero where h < -9/2 i.e. m > 9 (consumes ``h``).

    Any h below the cutoff (including -inf and NaN) gives exactly 0, any h >= -9/2
    exactly exp(h). Out-of-range values go through exp as _EXP_FLOOR rather than -inf,
    which keeps the vectorised exp on its fast path (about 3x faster on CPU).
    """
    torch.nn.functional.threshold(h, _below_cutoff(h.dtype), _EXP_FLOOR, inplace=True)
    return torch.nn.functional.threshold(h.exp_(), _W_ZERO_BELOW, 0.0, inplace=True)


@functools.cache
def _below_cutoff(dtype: torch.dtype) -> float:
    """The ``dtype`` float just below -9/2: threshold keeps x > it, i.e. exactly x >= -9/2."""
    below = torch.nextafter(
        torch.tensor(-0.5 * SIGMA_CUTOFF_SQ, dtype=dtype), torch.tensor(-math.inf, dtype=dtype)
    )
    return float(below)


def _add_into(canvas: Tensor, pix: Tensor, w: Tensor, rgb: Tensor) -> None:
    """canvas[c, pix] += w * rgb[:, c] for c in RGB, deterministically.

    ``canvas`` [3, HW], ``pix`` int64 [..., K], ``w`` [..., K] same shape, ``rgb`` [K, 3].
    CPU scatter_add_ is sequential; on CUDA index_put_(accumulate=True) sorts the
    indices instead of using atomics, so both give the same bits every call.
    """
    flat = pix.reshape(-1)
    for ch in range(3):
        src = (w * rgb[:, ch]).reshape(-1)
        if canvas.is_cuda:
            canvas[ch].index_put_((flat,), src, accumulate=True)
        else:
            canvas[ch].scatter_add_(0, flat, src)


# --------------------------------------------------------------------------- tiles


def _tile_pairs(box: Tensor) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(gaussian, tile) pairs covering every box, in chunks of at most _PAIR_CHUNK pairs.

    Yields ``gid`` int64 [P] (rows of ``box``), ``tx`` and ``ty`` int64 [P] tile coords,
    Gaussian-major. Pairs are numbered without being materialised all at once, so
    memory stays bounded however many tiles the (frame-clipped) boxes cover.
    """
    if box.shape[0] == 0:
        return
    tx0, tx1 = box[:, 0] // TILE, box[:, 1] // TILE  # [M]
    ty0, ty1 = box[:, 2] // TILE, box[:, 3] // TILE
    ntx = tx1 - tx0 + 1
    count = ntx * (ty1 - ty0 + 1)  # [M] tiles per Gaussian
    end = torch.cumsum(count, 0)  # [M] one past the last pair of each Gaussian
    start = end - count
    total = int(end[-1])
    for p0 in range(0, total, _PAIR_CHUNK):
        pid = torch.arange(p0, min(p0 + _PAIR_CHUNK, total), device=box.device)  # [P]
        gid = torch.searchsorted(end, pid, right=True)  # [P]
        local = pid - start[gid]  # index of the tile within the Gaussian's tile rectangle
        n_x = ntx[gid]
        yield gid, tx0[gid] + local % n_x, ty0[gid] + local // n_x


def _tile_grid(tx: Tensor, ty: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel columns and rows of tiles: int64 [TILE, P] each."""
    ar = torch.arange(TILE, device=tx.device)[:, None]
    return tx * TILE + ar, ty * TILE + ar


class _TileRender(torch.autograd.Function):
    """Image [H, W, 3] from drawable Gaussians (xy [M,2], conic [M,3], rgb [M,3], box [M,4])."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, xy: Tensor, abc: Tensor, rgb: Tensor, box: Tensor, height: int, width: int
    ) -> Tensor:
        tiles_w = -(-width // TILE)
        hp, wp = -(-height // TILE) * TILE, tiles_w * TILE  # padded canvas
        canvas = torch.zeros(3, hp * wp, dtype=xy.dtype, device=xy.device)
        for gid, tx, ty in _tile_pairs(box):
            cols, rows = _tile_grid(tx, ty)  # [T, P]
            h, _, _ = _log_kernel(xy[gid], abc[gid], box[gid], cols, rows)  # [T, T, P]
            pix = rows[:, None] * wp + cols[None]  # [T, T, P]
            _add_into(canvas, pix, _weights(h), rgb[gid])
        ctx.save_for_backward(xy, abc, rgb, box)
        ctx.size = (height, width)
        return canvas.view(3, hp, wp)[:, :height, :width].permute(1, 2, 0).contiguous()

    @staticmethod
    def backward(ctx: Any, grad_img: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        xy, abc, rgb, box = ctx.saved_tensors
        height, width = ctx.size
        tiles_w = -(-width // TILE)
        hp, wp = -(-height // TILE) * TILE, tiles_w * TILE
        gcanvas = torch.zeros(3, hp, wp, dtype=xy.dtype, device=xy.device)
        gcanvas[:, :height, :width] = grad_img.permute(2, 0, 1)
        gflat = gcanvas.view(3, hp * wp)
        grads = torch.zeros(xy.shape[0], 8, dtype=xy.dtype, device=xy.device)  # xy, abc, rgb
        for gid, tx, ty in _tile_pairs(box):
            cols, rows = _tile_grid(tx, ty)  # [T, P]
            a, b, c = abc[gid].unbind(1)  # [P]
            h, dx, dy = _log_kernel(xy[gid], abc[gid], box[gid], cols, rows)
            w = _weights(h)  # [T, T, P]
            pix = (rows[:, None] * wp + cols[None]).reshape(-1)  # [T*T*P]
            rgb_p = rgb[gid]  # [P, 3]
            g_w = torch.zeros_like(w)  # dL/dw [T, T, P]
            g_rgb = []
            for ch in range(3):
                g_img = gflat[ch].index_select(0, pix).view_as(w)  # [T, T, P] dL/dimage
                g_w.addcmul_(g_img, rgb_p[:, ch])
                g_rgb.append(g_img.mul_(w).sum((0, 1)))  # [P]
            g_m = g_w.mul_(w)  # -2 dL/dm, the -1/2 of dw/dm is applied per pair below
            g_m_x = g_m.sum(0)  # [T, P] summed over rows
            g_m_y = g_m.sum(1)  # [T, P] summed over columns
            s_x = -0.5 * (g_m_x * dx).sum(0)  # [P] sum of dL/dm * dx
            s_y = -0.5 * (g_m_y * dy).sum(0)
            g_a = -0.5 * (g_m_x * dx * dx).sum(0)
            g_b = -1.0 * ((g_m * dy[:, None]).sum(0) * dx).sum(0)
            g_c = -0.5 * (g_m_y * dy * dy).sum(0)
            g_cx = -2 * (a * s_x + b * s_y)
            g_cy = -2 * (b * s_x + c * s_y)
            pair = torch.stack([g_cx, g_cy, g_a, g_b, g_c, *g_rgb], 1)  # [P, 8]
            grads.index_add_(0, gid, pair)
        need = ctx.needs_input_grad
        return (
            grads[:, 0:2] if need[0] else None,
            grads[:, 2:5] if need[1] else None,
            grads[:, 5:8] if need[2] else None,
            None,
            None,
            None,
        )


# --------------------------------------------------------------------------- patches


def _patch_sizes(extent: int) -> Tensor:
    """Allowed patch edges (int64, ascending) for a frame axis of ``extent`` pixels.

    Even sizes up to 16, then 4 per octave (under 25% padding per axis); the last size
    is ``extent`` itself, so a patch never exceeds the frame.
    """
    sizes: list[int] = []
    s, step = 2, 2
    while s < extent:
        sizes.append(s)
        s += step
        if s >= 8 * step:
            step *= 2
    sizes.append(extent)
    return torch.tensor(sizes, dtype=torch.int64)


def _patch_plan(
    box: Tensor, height: int, width: int
) -> tuple[Tensor, list[tuple[int, int, int, int]]]:
    """Bucket Gaussians by patch size (PH, PW), patches covering the boxes.

    Returns ``order`` int64 [M] (a permutation of the rows of ``box``: by bucket, then
    row-major by box corner, which keeps the scatter cache-friendly) and chunks
    ``(start, stop, ph, pw)`` of ``order`` sharing a patch size, each with at most
    ~_PATCH_CHUNK pixels. The order depends only on ``box``, so it is deterministic.
    """
    if box.shape[0] == 0:
        return box.new_zeros(0), []
    dev = box.device
    sizes_w, sizes_h = _patch_sizes(width), _patch_sizes(height)
    n_h = sizes_h.shape[0]
    bw_i = torch.bucketize(box[:, 1] - box[:, 0] + 1, sizes_w.to(dev))  # [M] first size >= extent
    bh_i = torch.bucketize(box[:, 3] - box[:, 2] + 1, sizes_h.to(dev))
    bucket = bw_i * n_h + bh_i  # [M]
    key = bucket * (height * width) + box[:, 2] * width + box[:, 0]
    _, order = torch.sort(key, stable=True)
    buckets, counts = torch.unique_consecutive(bucket[order], return_counts=True)
    chunks: list[tuple[int, int, int, int]] = []
    start = 0
    for k, n in zip(buckets.tolist(), counts.tolist(), strict=True):
        pw, ph = int(sizes_w[k // n_h]), int(sizes_h[k % n_h])
        step = max(1, _PATCH_CHUNK // (pw * ph))
        for s0 in range(start, start + n, step):
            chunks.append((s0, min(s0 + step, start + n), ph, pw))
        start += n
    return order, chunks


def _patch_grid(box: Tensor, ph: int, pw: int, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Pixel columns int64 [PW, K] and rows int64 [PH, K] of patches covering ``box`` [K, 4].

    A patch starts at its box corner, moved back where needed to stay inside the frame
    (sizes never exceed the frame); the extra pixels fall outside the box and add 0.
    """
    x0 = box[:, 0].clamp(max=width - pw)  # [K]
    y0 = box[:, 2].clamp(max=height - ph)
    cols = x0 + torch.arange(pw, device=box.device)[:, None]  # [PW, K]
    rows = y0 + torch.arange(ph, device=box.device)[:, None]  # [PH, K]
    return cols, rows


# --------------------------------------------------------------------------- backend


def _check_size(height: int, width: int) -> None:
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size must be positive, got {height}x{width}")


class TorchTileBackend:
    """Exact tile-binned renderer (pure PyTorch, runs on the device of the Gaussians)."""

    name = "torch"

    def render(self, g: Gaussians, height: int, width: int) -> Tensor:
        """Differentiable render (w.r.t. xy_px, chol, rgb): [H, W, 3] in g's dtype."""
        _check_size(height, width)
        idx, box = pixel_boxes(g, height, width)
        abc = conic(g.chol[idx])  # only drawable rows, so no inf/nan enters the graph
        out: Tensor = _TileRender.apply(g.xy_px[idx], abc, g.rgb[idx], box, height, width)
        return out

    def render_nograd(self, g: Gaussians, height: int, width: int) -> Tensor:
        """Inference render, equal to :meth:`render` up to rounding; deterministic bits."""
        _check_size(height, width)
        with torch.no_grad():
            idx, box = pixel_boxes(g, height, width)
            order, chunks = _patch_plan(box, height, width)
            idx, box = idx[order], box[order]
            xy, rgb = g.xy_px.detach()[idx], g.rgb.detach()[idx]
            abc = conic(g.chol.detach()[idx])
            canvas = torch.zeros(3, height * width, dtype=xy.dtype, device=xy.device)
            for s0, s1, ph, pw in chunks:
                cols, rows = _patch_grid(box[s0:s1], ph, pw, height, width)
                h, _, _ = _log_kernel(xy[s0:s1], abc[s0:s1], box[s0:s1], cols, rows)
                pix = rows[:, None] * width + cols[None]  # [PH, PW, K]
                _add_into(canvas, pix, _weights(h), rgb[s0:s1])
            return canvas.view(3, height, width).permute(1, 2, 0).contiguous()

    def gaussians_touching(self, g: Gaussians, pixel_mask: Tensor) -> Tensor:
        """Sorted int64 [K] rows of ``g`` whose truncated ellipse covers a True pixel."""
        mask = pixel_mask.to(device=g.device, dtype=torch.bool)
        height, width = mask.shape
        with torch.no_grad():
            idx, box = pixel_boxes(g, height, width)
            if idx.numel() == 0 or not bool(mask.any()):
                return torch.zeros(0, dtype=torch.int64, device=g.device)
            # prune with a summed-area table: does the box contain any True pixel?
            sat = torch.zeros(height + 1, width + 1, dtype=torch.int64, device=g.device)
            sat[1:, 1:] = mask.long().cumsum(0).cumsum(1)
            x0, x1, y0, y1 = box.unbind(1)
            n_in = sat[y1 + 1, x1 + 1] - sat[y0, x1 + 1] - sat[y1 + 1, x0] + sat[y0, x0]
            cand = torch.nonzero(n_in > 0).flatten()  # rows of idx/box
            idx, box = idx[cand], box[cand]
            order, chunks = _patch_plan(box, height, width)
            idx, box = idx[order], box[order]
            xy, abc = g.xy_px.detach()[idx], conic(g.chol.detach()[idx])
            flat = mask.reshape(-1)
            hit = torch.zeros(idx.shape[0], dtype=torch.bool, device=g.device)
            for s0, s1, ph, pw in chunks:
                cols, rows = _patch_grid(box[s0:s1], ph, pw, height, width)
                h, _, _ = _log_kernel(xy[s0:s1], abc[s0:s1], box[s0:s1], cols, rows)
                pix = rows[:, None] * width + cols[None]  # [PH, PW, K]
                inside = (h >= -0.5 * SIGMA_CUTOFF_SQ) & flat[pix]  # [PH, PW, K]
                hit[s0:s1] = inside.flatten(0, 1).any(dim=0)
            return torch.sort(idx[hit]).values
