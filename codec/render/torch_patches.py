"""Patch-based differentiable renderer in pure PyTorch (CPU and CUDA): the ``patch`` backend.

Made for the fit loop, which calls the differentiable render hundreds of times per
frame. The tile path (:mod:`codec.render.torch_tiles`) evaluates every
(Gaussian, 16x16 tile) pair on all 256 tile pixels; here each Gaussian is evaluated
only on its own pixel box (:func:`codec.render.torch_tiles.pixel_boxes`), row by row.

Layout. Every drawable Gaussian contributes one *patch row* per pixel row of its box
(the rows are exact), and every patch row is ``PW`` pixels wide, ``PW`` the
Gaussian's box width rounded up to a short ladder of sizes (steps of about a quarter,
capped at the frame width; :func:`_patch_widths`). Gaussians are sorted by ``PW`` (then by
box corner, for a cache-friendly scatter), so the patch rows of one width form a
contiguous range that is evaluated as a few dense ``[PW, rows]`` tensors, chunk by
chunk. Per-row quantities (centre offsets, the ``c dy^2`` term, colour) are gathered
once per call, so the per-pixel work is a handful of broadcast elementwise ops, a
threshold, an exp and a scatter-add into a flat canvas; a few dozen tensor ops per
chunk, and a typical frame needs a handful of chunks. The canvas is laid out in
16-row bands, column-major within a band (see :class:`_Plan`), so the scatter (and
the backward's gather) over a ``[PW, rows]`` block walks memory almost linearly:
2-3x faster than on a row-major image.

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

_CHUNK = 1 << 15  # pixel evaluations per chunk (a [PW, rows] block)
_SAVE_LIMIT = 1 << 24  # weight elements kept from forward for backward; beyond, recomputed
_BAND = 16  # canvas rows per band: in a band, the pixels of one column are contiguous


def _patch_widths(width: int) -> Tensor:
    """Allowed patch widths (int64, ascending) for a frame ``width`` px wide.

    1 to 8, then steps of about a quarter (10, 12, 14, 16, 20, 24, 30, 36, 44, ...: under
    25% padding, ~10% typical), and ``width`` itself last, so a patch is never wider than
    the frame. Finer steps cost more chunks (tensor ops) per call; this was measured best.
    """
    sizes: list[int] = []
    s = 1
    while s < width:
        sizes.append(s)
        s += 1 if s < 8 else s // 8 * 2
    sizes.append(width)
    return torch.tensor(sizes, dtype=torch.int64)


@dataclass
class _Plan:
    """How to evaluate the drawable Gaussians as patch rows (tensors on their device).

    The canvas is banded: pixel (y, x) lives at ``(y // B) * B * pad_width + x * B + y % B``
    (B = _BAND), so a patch column's pixels on consecutive rows are neighbours in memory
    and the gathers and scatters over a ``[PW, rows]`` block walk memory almost linearly.
    """

    order: Tensor  # int64 [M] permutation of the drawable Gaussians (by patch width, corner)
    gid: Tensor  # int64 [R] Gaussian (position in ``order``) of each patch row
    row: Tensor  # int64 [R] image row of each patch row
    x0: Tensor  # int64 [R] first box column of the row's Gaussian (the patch's first column)
    last: Tensor  # int64 [R] box width - 1 of the row's Gaussian (columns past it are masked)
    base: Tensor  # int64 [R] canvas index of the patch row's first pixel
    chunks: list[tuple[int, int, int]]  # (r0, r1, pw): patch rows r0:r1, all pw wide
    pad_width: int  # canvas row length: frame width + widest patch - 1
    bands: int  # number of _BAND-row bands covering the frame


def _make_plan(box: Tensor, height: int, width: int) -> _Plan:
    """Patch rows for ``box`` int64 [M, 4] (from :func:`pixel_boxes`); deterministic."""
    dev = box.device
    ladder = _patch_widths(width)
    sizes = ladder.to(dev)
    bx0, bx1, by0, by1 = box.t()  # [M] each
    size_i = torch.bucketize(bx1 - bx0 + 1, sizes)  # [M] first allowed width >= box width
    key = (size_i * height + by0) * width + bx0
    order = torch.sort(key, stable=True).indices  # [M]
    bx0, bx1, by0, by1, size_i = (t.index_select(0, order) for t in (bx0, bx1, by0, by1, size_i))
    counts = by1 - by0 + 1  # [M]
    gid = torch.repeat_interleave(torch.arange(counts.shape[0], device=dev), counts)  # [R]
    first = torch.cumsum(counts, 0) - counts  # [M] first patch row of each Gaussian
    row = (by0 - first).index_select(0, gid) + torch.arange(gid.shape[0], device=dev)  # [R]
    x0 = bx0.index_select(0, gid)
    last = (bx1 - bx0).index_select(0, gid)
    chunks: list[tuple[int, int, int]] = []
    widest = 1
    if counts.shape[0] > 0:
        ends = torch.cumsum(counts, 0)  # [M] one past each Gaussian's last patch row
        bucket_end = torch.nonzero(torch.diff(size_i, append=size_i[-1:] + 1)).flatten()
        r0 = 0
        for k, r_end in zip(
            size_i.index_select(0, bucket_end).tolist(),
            ends.index_select(0, bucket_end).tolist(),
            strict=True,
        ):
            pw = int(ladder[k])
            step = max(1, _CHUNK // pw)
            chunks.extend((s0, min(s0 + step, r_end), pw) for s0 in range(r0, r_end, step))
            r0 = r_end
            widest = pw
    pad_width = width + widest - 1
    shift = _BAND.bit_length() - 1  # _BAND is a power of two
    base = (row >> shift) * (_BAND * pad_width) + (row & (_BAND - 1)) + x0 * _BAND
    bands = -(-height // _BAND)
    return _Plan(order, gid, row, x0, last, base, chunks, pad_width, bands)


class _RowTable:
    """Per-patch-row quantities, [R] each, in the compute dtype (see :class:`_Plan`)."""

    def __init__(self, plan: _Plan, xy: Tensor, abc: Tensor, rgb: Tensor) -> None:
        # xy [M, 2], abc [M, 3] conic, rgb [M, 3], rows in plan order
        gid = plan.gid
        half = -0.5 * abc  # [M, 3] (a, b, c) * -1/2 as in _log_kernel

        def rows(v: Tensor) -> Tensor:  # [M] -> [R]
            return v.index_select(0, gid)

        self.cx, self.a, self.b2 = rows(xy[:, 0]), rows(half[:, 0]), rows(2 * half[:, 1])
        self.dy = (plan.row.to(xy.dtype) + 0.5) - rows(xy[:, 1])  # [R]
        self.t3 = rows(half[:, 2]) * self.dy * self.dy  # [R] (c dy) dy
        self.x0h = plan.x0.to(xy.dtype) + 0.5  # [R] centre of the patch's first column
        self.last = plan.last.to(xy.dtype)  # [R]
        self.base = plan.base  # [R]
        self.rgb = torch.stack([rows(rgb[:, ch]) for ch in range(3)])  # [3, R]
        self._q: dict[int, tuple[Tensor, Tensor]] = {}

    def columns(self, r0: int, r1: int, pw: int) -> tuple[Tensor, Tensor, Tensor]:
        """Column offsets qf [PW, 1], dx [PW, Rc] and canvas indices [PW, Rc] of a chunk."""
        if pw not in self._q:
            q = torch.arange(pw, device=self.cx.device)[:, None]  # [PW, 1]
            self._q[pw] = q.to(self.cx.dtype), q * _BAND
        qf, q_off = self._q[pw]
        dx = (self.x0h[r0:r1] + qf) - self.cx[r0:r1]  # [PW, Rc]; x0h + q is exact
        return qf, dx, self.base[r0:r1] + q_off

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
        canvas = xy.new_zeros(3, plan.bands * _BAND * plan.pad_width)
        saved: list[Tensor | None] = []
        budget = _SAVE_LIMIT
        for r0, r1, pw in plan.chunks:
            qf, dx, pix = table.columns(r0, r1, pw)
            w = _weights(table.log_kernel(r0, r1, qf, dx))  # [PW, Rc]
            _add_into(canvas, pix, w, table.rgb[:, r0:r1].t())
            budget -= w.numel()
            saved.append(w if budget >= 0 else None)
        ctx.save_for_backward(abc)
        ctx.plan, ctx.table, ctx.saved_w, ctx.size = plan, table, saved, (height, width)
        img = canvas.view(3, plan.bands, plan.pad_width, _BAND).permute(1, 3, 2, 0)
        return img.reshape(plan.bands * _BAND, plan.pad_width, 3)[:height, :width].contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_img: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (abc,) = ctx.saved_tensors
        plan: _Plan = ctx.plan
        table: _RowTable = ctx.table
        height, width = ctx.size
        gpad = grad_img.new_zeros(plan.bands, _BAND, plan.pad_width, 3)
        gpad.view(plan.bands * _BAND, plan.pad_width, 3)[:height, :width] = grad_img
        gflat = gpad.permute(3, 0, 2, 1).reshape(3, -1)  # [3, canvas] banded like the canvas
        row_sums = []  # per chunk [6, Rc]: sum over the patch row of g, g dx, g dx^2, G_c w
        for (r0, r1, pw), w in zip(plan.chunks, ctx.saved_w, strict=True):
            qf, dx, pix = table.columns(r0, r1, pw)
            if w is None:
                w = _weights(table.log_kernel(r0, r1, qf, dx))
            flat = pix.view(-1)
            prod = w.new_empty(6, *w.shape)  # [6, PW, Rc]
            g_img = prod[3:]  # dL/dI at the patch pixels, channel by channel
            for ch in range(3):
                torch.index_select(gflat[ch], 0, flat, out=g_img[ch].view(-1))
            rgb = table.rgb[:, r0:r1]  # [3, Rc]
            g = torch.mul(g_img[0], rgb[0], out=prod[0])  # dL/dw
            g.addcmul_(g_img[1], rgb[1]).addcmul_(g_img[2], rgb[2])
            g_img.mul_(w)  # dL/d rgb per pixel
            g.mul_(w)  # dL/dh
            torch.mul(g, dx, out=prod[1])
            torch.mul(prod[1], dx, out=prod[2])
            row_sums.append(prod.sum(1))
        n = abc.shape[0]
        s = torch.cat(row_sums, 1) if row_sums else abc.new_zeros(6, 0)  # [6, R]
        dy = table.dy
        # per patch row: sums of g dx, g dy, g dx^2, g dx dy, g dy^2 and G_c w (g = dL/dh)
        per_row = [s[1], s[0] * dy, s[2], s[1] * dy, s[0] * dy * dy, s[3], s[4], s[5]]
        sums = abc.new_zeros(8, n)  # [8, M] the same, summed over each Gaussian's rows
        for i, v in enumerate(per_row):
            sums[i].scatter_add_(0, plan.gid, v)
        sx, sy, sxx, sxy, syy = sums[:5]
        a, b, c = abc.unbind(1)
        need = ctx.needs_input_grad
        # h = -(a dx^2 + 2 b dx dy + c dy^2) / 2 with dx = x - cx, dy = y - cy
        g_xy = torch.stack([a * sx + b * sy, b * sx + c * sy], 1) if need[0] else None
        g_abc = torch.stack([-0.5 * sxx, -sxy, -0.5 * syy], 1) if need[1] else None
        g_rgb = sums[5:].t() if need[2] else None
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
        idx = idx.index_select(0, plan.order)
        xy, chol, rgb = (t.index_select(0, idx) for t in (g.xy_px, g.chol, g.rgb))
        abc = conic(chol)  # only drawable rows, so no inf/nan enters the graph
        out: Tensor = _PatchRender.apply(xy, abc, rgb, plan, height, width)
        return out

    def render_nograd(self, g: Gaussians, height: int, width: int) -> Tensor:
        """Inference render: bit-identical to :meth:`TorchTileBackend.render_nograd`."""
        return self._tiles.render_nograd(g, height, width)

    def gaussians_touching(self, g: Gaussians, pixel_mask: Tensor) -> Tensor:
        """Sorted int64 [K] rows of ``g`` whose truncated ellipse covers a True pixel."""
        return self._tiles.gaussians_touching(g, pixel_mask)
