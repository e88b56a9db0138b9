"""The canonical inference render: the pixels a decoder must produce for GOPs that set the
``RENDER_CANONICAL`` flag (docs/FORMAT.md, "Rendering").

Every operation is a fixed sequence of IEEE-754 float32 additions and multiplications:

- ``h = (a*dx)*dx + (b2*dx)*dy`` then ``h = h + (c*dy)*dy``, with ``a = -A/2``, ``b2 = 2*(-B/2)``,
  ``c = -C/2`` from the conic ``(A, B, C)`` and ``dx = (px + 0.5) - x``, ``dy = (py + 0.5) - y``;
- ``w = det_exp(h)`` where ``h >= -4.5`` and the pixel lies in the Gaussian's pixel box
  (:func:`codec.render.torch_tiles.pixel_boxes`), else 0; ``det_exp`` is a polynomial, not the
  platform's ``exp``, so no libm or vector-math library enters the result;
- each pixel is ``acc = acc + w * rgb`` over the drawable Gaussians in ascending index order,
  starting from 0.

So the fused C++ kernel (:mod:`codec.render.fused_cpu`) and the PyTorch emulation here
(:func:`render_canonical_torch`, tile by tile, one "layer" of each tile's Gaussian list at a time)
give the same bits on any machine and thread count; tests check it. The emulation is the
reference and the fallback where the extension cannot be built.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from codec.gaussians import Gaussians, conic
from codec.render import cpu_ext
from codec.render.base import TILE
from codec.render.torch_tiles import _check_size, _tile_pairs, pixel_boxes

__all__ = ["det_exp", "render_canonical", "render_canonical_torch", "render_canonical_u8", "to_u8"]

_F32 = torch.float32


def _c(value: float) -> Tensor:
    """A float32 constant (so every op below is float32 x float32, never float64)."""
    return torch.tensor(value, dtype=_F32)


_SHIFTER = _c(12582912.0)  # 1.5 * 2**23: (t + S) - S rounds t to the nearest integer (ties even)
_LOG2E = _c(1.44269504088896341)
_LN2_HI = _c(0.693145751953125)
_LN2_LO = _c(1.42860682030941723e-06)
_POLY = [_c(v) for v in (1 / 720, 1 / 120, 1 / 24, 1 / 6, 0.5, 1.0, 1.0)]
_CUTOFF = -4.5  # h at the 3-sigma ellipse (m = 9)


def det_exp(h: Tensor) -> Tensor:
    """exp(h) for float32 ``h`` (clamped to >= -5), bit-identical to ``det_exp`` in splat_cpu.cpp."""
    hc = torch.clamp(h, min=-5.0)
    n = (hc * _LOG2E + _SHIFTER) - _SHIFTER
    r = hc - n * _LN2_HI
    r = r - n * _LN2_LO
    p = _POLY[0].expand_as(r)
    for coef in _POLY[1:]:
        p = p * r + coef
    scale = torch.bitwise_left_shift(n.to(torch.int32) + 127, 23).view(_F32)
    return p * scale


def render_canonical_torch(g: Gaussians, height: int, width: int) -> Tensor:
    """Canonical render in pure PyTorch: float32 [H, W, 3], bit-identical to the C++ kernel."""
    _check_size(height, width)
    with torch.no_grad():
        g = g.detach().to("cpu")
        idx, box = pixel_boxes(g, height, width)
        xy = g.xy_px[idx].to(_F32)
        abc = conic(g.chol[idx]).to(_F32)
        rgb = g.rgb[idx].to(_F32)
        tiles_x, tiles_y = -(-width // TILE), -(-height // TILE)
        canvas = torch.zeros(tiles_y * tiles_x, 3, TILE * TILE, dtype=_F32)
        parts = [(gid, ty * tiles_x + tx) for gid, tx, ty in _tile_pairs(box)]
        if parts:
            gid = torch.cat([p[0] for p in parts])
            tile = torch.cat([p[1] for p in parts])
            order = torch.argsort(tile * max(1, len(idx)) + gid)  # by tile, then Gaussian index
            gid, tile = gid[order], tile[order]
            first = torch.searchsorted(tile, tile)  # index of each tile's first pair
            rank = torch.arange(len(tile)) - first  # position within the tile's list
            ar = torch.arange(TILE)
            for k in range(int(rank.max()) + 1):
                sel = rank == k
                gk, tk = gid[sel], tile[sel]  # each tile at most once per layer
                cols = (tk % tiles_x)[:, None] * TILE + ar  # [P, 16]
                rows = (tk // tiles_x)[:, None] * TILE + ar
                bx = box[gk]
                dx = (cols.to(_F32) + 0.5) - xy[gk, 0:1]  # [P, 16]
                dy = (rows.to(_F32) + 0.5) - xy[gk, 1:2]
                a = -0.5 * abc[gk, 0:1]
                b2 = 2.0 * (-0.5 * abc[gk, 1:2])
                c = -0.5 * abc[gk, 2:3]
                t1 = (a * dx) * dx  # [P, 16] over columns
                b2dx = b2 * dx
                t3 = (c * dy) * dy  # [P, 16] over rows
                h = t1[:, None, :] + b2dx[:, None, :] * dy[:, :, None]  # [P, 16 rows, 16 cols]
                h = h + t3[:, :, None]
                inside = ((cols >= bx[:, 0:1]) & (cols <= bx[:, 1:2]))[:, None, :] & (
                    (rows >= bx[:, 2:3]) & (rows <= bx[:, 3:4])
                )[:, :, None]
                w = torch.where(inside & (h >= _CUTOFF), det_exp(h), torch.zeros((), dtype=_F32))
                w = w.reshape(len(gk), 1, TILE * TILE)
                canvas[tk] = canvas[tk] + w * rgb[gk][:, :, None]
        img = canvas.view(tiles_y, tiles_x, 3, TILE, TILE).permute(0, 3, 1, 4, 2)
        img = img.reshape(tiles_y * TILE, tiles_x * TILE, 3)
        return img[:height, :width].contiguous()


def to_u8(image: Tensor) -> np.ndarray:
    """float32 [H, W, 3] (any range) -> uint8 [H, W, 3]: round-half-even(clamp(v, 0, 1) * 255)."""
    return (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu().numpy()


def drawable_boxes(ext: ModuleType, g: Gaussians, height: int, width: int) -> tuple[Tensor, Tensor]:
    """:func:`codec.render.torch_tiles.pixel_boxes` computed by the C++ extension (same result)."""
    _check_size(height, width)
    xy = g.xy_px.detach().to(device="cpu", dtype=_F32)
    chol = g.chol.detach().to(device="cpu", dtype=_F32)
    idx, box = ext.pixel_boxes(xy, chol, height, width)
    return idx, box


def _drawable(
    ext: ModuleType, g: Gaussians, height: int, width: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The kernel's inputs: xy [M, 2], conic [M, 3], rgb [M, 3] float32 and box int64 [M, 4]."""
    g = g.detach().to("cpu")
    idx, box = drawable_boxes(ext, g, height, width)
    return g.xy_px[idx].to(_F32), conic(g.chol[idx]).to(_F32), g.rgb[idx].to(_F32), box


def render_canonical(g: Gaussians, height: int, width: int) -> Tensor:
    """Canonical render, float32 [H, W, 3] on the CPU: the C++ kernel when built, else PyTorch."""
    ext = cpu_ext.load()
    if ext is None:
        return render_canonical_torch(g, height, width)
    with torch.no_grad():
        out: Tensor = ext.render_forward(*_drawable(ext, g, height, width), height, width, False)[0]
        return out


def render_canonical_u8(g: Gaussians, height: int, width: int) -> np.ndarray:
    """The decoder's output, uint8 [H, W, 3]: ``to_u8(render_canonical(g))`` in one pass."""
    ext = cpu_ext.load()
    if ext is None:
        return to_u8(render_canonical_torch(g, height, width))
    with torch.no_grad():
        out: Tensor = ext.render_forward_u8(*_drawable(ext, g, height, width), height, width)
        return out.numpy()
