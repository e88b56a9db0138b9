"""Patch-based differentiable renderer in pure PyTorch (CPU and CUDA): the ``patch`` backend.

Made for the fit loop, which calls the differentiable render hundreds of times per
frame. The tile path (:mod:`codec.render.torch_tiles`) evaluates every
(Gaussian, 16x16 tile) pair on all 256 tile pixels; here each Gaussian is evaluated
only on its own pixel box (:func:`codec.render.torch_tiles.pixel_boxes`), row by row.

Layout. Every drawable Gaussian contributes one *patch row* per pixel row of its box
(the rows are exact), and every patch row is ``PW`` pixels wide, ``PW`` the
Gaussian's box width rounded up to a short ladder of sizes (two per octave, capped
at the frame width; :func:`_patch_widths`). Gaussians are sorted by ``PW`` (then by
box corner, for a cache-friendly scatter), so the patch rows of one width form a
contiguous range that is evaluated as a few dense ``[PW, rows]`` tensors, chunk by
chunk. Per-row quantities (centre offsets, the ``c dy^2`` term, colour) are gathered
once per call, so the per-pixel work is a handful of broadcast elementwise ops, a
threshold, an exp and a scatter-add into the (width-padded) flat image; a few
dozen tensor ops per chunk, and a typical frame needs only a few chunks.

Exactness. ``h = -m/2`` is computed with the floating-point operations of
:func:`codec.render.torch_tiles._log_kernel` (those of the dense reference on a
conic scaled by -1/2), and pixels outside the box are forced to zero exactly as
there, so the truncation decisions are bit-identical to the tile path's and the
dense reference's (see :mod:`codec.render.torch_tiles` for the nearly singular
caveat); only the order of the final sums differs.

Backward. A custom autograd function with a hand-written backward: per chunk it
gathers the image gradient at the patch pixels and reduces ``dL/dh`` to five sums per
patch row (``sum g``, ``sum g dx``, ``sum g dx^2`` and, for colour, ``sum dL/dI w``),
which the row's ``dy`` turns into per-Gaussian sums, gradients of centre, conic and
colour. The forward keeps the weights of the chunks for the backward up to
``_SAVE_LIMIT`` elements and recomputes the rest, so memory stays bounded.

:meth:`PatchBackend.render_nograd` and :meth:`PatchBackend.gaussians_touching`
delegate to :class:`codec.render.torch_tiles.TorchTileBackend`, so inference renders
are bit-identical whichever of the two backends fitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from codec.gaussians import Gaussians, conic
from codec.render.torch_tiles import (
    TorchTileBackend,
    _add_into,
    _check_size,
    _weights,
    pixel_boxes,
)

__all__ = ["PatchBackend"]

_CHUNK = 1 << 16  # pixel evaluations per chunk (a [PW, rows] block)
_SAVE_LIMIT = 1 << 24  # weight elements kept from forward for backward; beyond, recomputed


def _patch_widths(width: int) -> Tensor:
    """Allowed patch widths (int64, ascending) for a frame ``width`` px wide.

    2, 3, 4, 6, 8, 12, 16, ... (two per octave: at most 50% padding, ~20% typical), and
    ``width`` itself last, so a patch is never wider than the frame.
    """
    sizes: list[int] = []
    s = 2
    while s < width:
        sizes.append(s)
        s = s * 3 // 2 if s & (s - 1) == 0 else s * 4 // 3  # 2^k -> 1.5 * 2^k -> 2^(k+1)
    sizes.append(width)
    return torch.tensor(sizes, dtype=torch.int64)


@dataclass
class _Plan:
    """How to evaluate drawable Gaussians as patch rows (all tensors on one device)."""

    order: Tensor  # int64 [M] permutation of the drawable Gaussians (by patch width, corner)
    gid: Tensor  # int64 [R] Gaussian (position in ``order``) of each patch row
    row: Tensor  # int64 [R] image row of each patch row
    x0: Tensor  # int64 [R] first box column of the row's Gaussian (the patch's first column)
    last: Tensor  # int64 [R] box width - 1 of the row's Gaussian (columns past it are masked)
    chunks: list[tuple[int, int, int]]  # (r0, r1, pw): patch rows r0:r1, all pw wide
    pad_width: int  # canvas row length: frame width + widest patch - 1


def _make_plan(box: Tensor, height: int, width: int) -> _Plan:
    """Patch rows for ``box`` int64 [M, 4] (from :func:`pixel_boxes`); deterministic."""
    dev = box.device
    sizes = _patch_widths(width).to(dev)
    bw = box[:, 1] - box[:, 0] + 1  # [M]
    bh = box[:, 3] - box[:, 2] + 1  # [M]
    size_i = torch.bucketize(bw, sizes)  # [M] first allowed width >= box width
    key = (size_i * height + box[:, 2]) * width + box[:, 0]
    order = torch.sort(key, stable=True).indices  # [M]
    box, bh, size_i = box[order], bh[order], size_i[order]
    gid = torch.repeat_interleave(torch.arange(box.shape[0], device=dev), bh)  # [R]
    first = torch.cumsum(bh, 0) - bh  # [M] first patch row of each Gaussian
    row = box[gid, 2] + torch.arange(gid.shape[0], device=dev) - first[gid]  # [R]
    x0 = box[gid, 0]
    last = (box[:, 1] - box[:, 0])[gid]
    chunks: list[tuple[int, int, int]] = []
    pad = 1
    if box.shape[0] > 0:
        buckets, counts = torch.unique_consecutive(size_i, return_counts=True)
        rows_per = torch.zeros(counts.shape[0], dtype=torch.int64, device=dev)
        rows_per.index_add_(0, torch.repeat_interleave(torch.arange(counts.shape[0], device=dev), counts), bh)
        r0 = 0
        for k, n in zip(buckets.tolist(), rows_per.tolist(), strict=True):
            pw = int(sizes[k])
            step = max(1, _CHUNK // pw)
            for s0 in range(r0, r0 + n, step):
                chunks.append((s0, min(s0 + step, r0 + n), pw))
            r0 += n
            pad = max(pad, pw)
    return _Plan(order, gid, row, x0, last, chunks, width + pad - 1)


class _RowTable:
    """Per-patch-row quantities, [R] each, in the compute dtype (see :class:`_Plan`)."""

    def __init__(self, plan: _Plan, xy: Tensor, abc: Tensor, rgb: Tensor) -> None:
        # xy [M, 2], abc [M, 3] conic, rgb [M, 3], rows in plan order
        half = (-0.5 * abc).t()  # [3, M] (a, b, c) * -1/2 as in _log_kernel
        per_g = torch.stack([xy[:, 0], xy[:, 1], half[0], 2 * half[1], half[2]])  # [5, M]
        self.cx, cy, self.a, self.b2, c = per_g.index_select(1, plan.gid).unbind(0)  # [R]
        self.dy = (plan.row.to(xy.dtype) + 0.5) - cy  # [R]
        self.t3 = c * self.dy * self.dy  # [R]
        self.x0h = plan.x0.to(xy.dtype) + 0.5  # [R] centre of the patch's first column
        self.last = plan.last.to(xy.dtype)  # [R]
        self.base = plan.row * plan.pad_width + plan.x0  # [R] flat index of the first pixel
        self.rgb_t = rgb.t().index_select(1, plan.gid)  # [3, R]

    def columns(self, r0: int, r1: int, pw: int) -> tuple[Tensor, Tensor, Tensor]:
        """Patch column offsets qf [PW, 1], dx [PW, Rc] and flat pixel indices [PW, Rc]."""
        q = torch.arange(pw, device=self.cx.device)[:, None]  # [PW, 1]
        qf = q.to(self.cx.dtype)
        dx = (self.x0h[r0:r1] + qf) - self.cx[r0:r1]  # [PW, Rc]; x0h + q is exact
        return qf, dx, self.base[r0:r1] + q

    def log_kernel(self, r0: int, r1: int, qf: Tensor, dx: Tensor) -> Tensor:
        """h = -m/2 [PW, Rc], below -1e30 at columns past the box (see :func:`_log_kernel`)."""
        h = self.a[r0:r1] * dx
        h *= dx  # (a dx) dx
        t2 = self.b2[r0:r1] * dx
        t2 *= self.dy[r0:r1]  # ((2 b) dx) dy
        h += t2
        h += self.t3[r0:r1]
        # past the box: subtract >= 1e30 (adds exactly 0 inside; vectorises, unlike masked_fill)
        past = (qf - self.last[r0:r1]).clamp_(min=0.0)
        return h.add_(past, alpha=-1e30)


class _PatchRender(torch.autograd.Function):
    """Image [H, W, 3] from drawable Gaussians in plan order (xy [M,2], conic [M,3], rgb [M,3])."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, xy: Tensor, abc: Tensor, rgb: Tensor, plan: _Plan, height: int, width: int
    ) -> Tensor:
        table = _RowTable(plan, xy, abc, rgb)
        wp = plan.pad_width
        canvas = torch.zeros(3, height * wp, dtype=xy.dtype, device=xy.device)
        saved: list[Tensor | None] = []
        budget = _SAVE_LIMIT
        for r0, r1, pw in plan.chunks:
            qf, dx, pix = table.columns(r0, r1, pw)
            w = _weights(table.log_kernel(r0, r1, qf, dx))  # [PW, Rc]
            _add_into(canvas, pix, w, table.rgb_t[:, r0:r1].t())
            budget -= w.numel()
            saved.append(w if budget >= 0 else None)
        ctx.save_for_backward(abc)
        ctx.plan, ctx.table, ctx.saved_w, ctx.size = plan, table, saved, (height, width)
        return canvas.view(3, height, wp)[:, :, :width].permute(1, 2, 0).contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_img: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (abc,) = ctx.saved_tensors
        plan: _Plan = ctx.plan
        table: _RowTable = ctx.table
        height, width = ctx.size
        wp = plan.pad_width
        gcanvas = grad_img.new_zeros(3, height, wp)
        gcanvas[:, :, :width] = grad_img.permute(2, 0, 1)
        gflat = gcanvas.view(3, height * wp)
        n_rows = plan.gid.shape[0]
        # per patch row: sum g, sum g dx, sum g dx^2 (g = dL/dh), then dL/d rgb
        sums = grad_img.new_zeros(6, n_rows)
        for (r0, r1, pw), w in zip(plan.chunks, ctx.saved_w, strict=True):
            qf, dx, pix = table.columns(r0, r1, pw)
            if w is None:
                w = _weights(table.log_kernel(r0, r1, qf, dx))
            flat = pix.reshape(-1)
            rgb = table.rgb_t[:, r0:r1]  # [3, Rc]
            g_w = torch.empty_like(w)  # dL/dw [PW, Rc]
            for ch in range(3):
                g_img = gflat[ch].index_select(0, flat).view_as(w)  # [PW, Rc]
                if ch == 0:
                    torch.mul(g_img, rgb[0], out=g_w)
                else:
                    g_w.addcmul_(g_img, rgb[ch])
                torch.sum(g_img.mul_(w), 0, out=sums[3 + ch, r0:r1])
            g = g_w.mul_(w)  # dL/dh
            torch.sum(g, 0, out=sums[0, r0:r1])
            g = g.mul_(dx)
            torch.sum(g, 0, out=sums[1, r0:r1])
            torch.sum(g.mul_(dx), 0, out=sums[2, r0:r1])
        s0, s1, s2 = sums[0], sums[1], sums[2]
        dy = table.dy
        per_row = torch.stack([s1, s0 * dy, s2, s1 * dy, s0 * dy * dy, sums[3], sums[4], sums[5]])
        per_g = grad_img.new_zeros(abc.shape[0], 8)  # [M, 8] sums over each Gaussian's rows
        per_g.index_add_(0, plan.gid, per_row.t())
        sx, sy, sxx, sxy, syy = per_g[:, :5].unbind(1)  # sums of g dx, g dy, g dx^2, ...
        a, b, c = abc.unbind(1)
        need = ctx.needs_input_grad
        # h = -(a dx^2 + 2 b dx dy + c dy^2) / 2, dx = x - cx, dy = y - cy
        g_xy = torch.stack([a * sx + b * sy, b * sx + c * sy], 1) if need[0] else None
        g_abc = torch.stack([-0.5 * sxx, -sxy, -0.5 * syy], 1) if need[1] else None
        g_rgb = per_g[:, 5:8] if need[2] else None
        return g_xy, g_abc, g_rgb, None, None, None


class PatchBackend:
    """Exact patch-row renderer (pure PyTorch): fast differentiable render for fitting."""

    name = "patch"

    def __init__(self) -> None:
        self._tiles = TorchTileBackend()

    def render(self, g: Gaussians, height: int, width: int) -> Tensor:
        """Differentiable render (w.r.t. xy_px, chol, rgb): [H, W, 3] in g's dtype."""
        _check_size(height, width)
        idx, box = pixel_boxes(g, height, width)
        with torch.no_grad():
            plan = _make_plan(box, height, width)
        idx = idx[plan.order]
        abc = conic(g.chol[idx])  # only drawable rows, so no inf/nan enters the graph
        out: Tensor = _PatchRender.apply(g.xy_px[idx], abc, g.rgb[idx], plan, height, width)
        return out

    def render_nograd(self, g: Gaussians, height: int, width: int) -> Tensor:
        """Inference render: bit-identical to :meth:`TorchTileBackend.render_nograd`."""
        return self._tiles.render_nograd(g, height, width)

    def gaussians_touching(self, g: Gaussians, pixel_mask: Tensor) -> Tensor:
        """Sorted int64 [K] rows of ``g`` whose truncated ellipse covers a True pixel."""
        return self._tiles.gaussians_touching(g, pixel_mask)
