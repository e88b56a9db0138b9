"""Fused C++/OpenMP renderer for the CPU: the ``cpu`` backend (picked by ``auto`` on the CPU).

One pass per 16x16 tile evaluates every (Gaussian, tile) pair of the tile's list on the pair's
pixels and accumulates in registers/L1 (forward), or reduces ``dL/dh`` to per-pair moment sums
(backward), instead of materialising per-pixel tensors as the PyTorch backends must. Tiles run
in parallel (OpenMP, ``torch.get_num_threads()`` threads); every result is independent of the
thread count. The forward is the canonical render (:mod:`codec.render.canonical`), so the
differentiable render, :meth:`FusedCpuBackend.render_nograd` and the decoder agree bit for bit.
Truncation decisions are the dense reference's (same ``h`` formula); only the kernel's ``exp``
(a deterministic polynomial, ~1 ulp) and the order of the sums differ from it.

The source is ``csrc/splat_cpu.cpp``; :mod:`codec.render.cpu_ext` builds it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from codec.gaussians import Gaussians, conic
from codec.render import cpu_ext
from codec.render.base import VjpFn
from codec.render.canonical import drawable_boxes, render_canonical
from codec.render.torch_tiles import _check_size

__all__ = ["FusedCpuBackend", "fused_available"]


def fused_available() -> bool:
    """True when the C++ extension is built (or can be built) on this machine."""
    return cpu_ext.load() is not None


class _FusedRender(torch.autograd.Function):
    """Image [H, W, 3] from drawable Gaussians (xy [M,2], conic [M,3], rgb [M,3], box [M,4])."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, xy: Tensor, abc: Tensor, rgb: Tensor, box: Tensor, height: int, width: int
    ) -> Tensor:
        ext = cpu_ext.load()
        assert ext is not None
        img, start, ids = ext.render_forward(xy, abc, rgb, box, height, width, True)
        ctx.save_for_backward(xy, abc, rgb, box, start, ids)
        return img  # type: ignore[no-any-return]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_img: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        ext = cpu_ext.load()
        assert ext is not None
        xy, abc, rgb, box, start, ids = ctx.saved_tensors
        g_xy, g_abc, g_rgb = ext.render_backward(xy, abc, rgb, box, start, ids, grad_img)
        need = ctx.needs_input_grad
        return (
            g_xy if need[0] else None,
            g_abc if need[1] else None,
            g_rgb if need[2] else None,
            None,
            None,
            None,
        )


class FusedCpuBackend:
    """Exact tile-binned renderer in C++ (CPU tensors, float32)."""

    name = "cpu"

    def __init__(self) -> None:
        ext = cpu_ext.load()
        if ext is None:
            raise RuntimeError(
                "the fused CPU renderer could not be built "
                f"({cpu_ext.load_error()}); install a C++ compiler (g++) and ninja, "
                "or use backend 'patch'"
            )
        self._ext = ext

    def render(self, g: Gaussians, height: int, width: int) -> Tensor:
        """Differentiable render (w.r.t. xy_px, chol, rgb): float32 [H, W, 3]."""
        _check_size(height, width)
        if g.device.type != "cpu":
            raise ValueError(f"the 'cpu' backend renders CPU tensors; got {g.device}")
        idx, box = drawable_boxes(self._ext, g, height, width)
        xy = g.xy_px[idx].float()
        abc = conic(g.chol[idx]).float()  # only drawable rows, so no inf/nan enters the graph
        out: Tensor = _FusedRender.apply(xy, abc, g.rgb[idx].float(), box, height, width)
        return out

    def render_nograd(self, g: Gaussians, height: int, width: int) -> Tensor:
        """The canonical render (bit-identical to :meth:`render`'s forward)."""
        return render_canonical(g, height, width)

    def gaussians_touching(self, g: Gaussians, pixel_mask: Tensor) -> Tensor:
        """Sorted int64 [K] rows of ``g`` whose truncated ellipse covers a True pixel, with the
        canonical render's truncation (one C++ pass; the PyTorch tile backend's answer up to
        rounding at the 3-sigma edge)."""
        mask = pixel_mask.to(device="cpu", dtype=torch.bool)
        height, width = int(mask.shape[0]), int(mask.shape[1])
        with torch.no_grad():
            g = g.detach().to("cpu")
            idx, box = drawable_boxes(self._ext, g, height, width)
            if idx.numel() == 0 or not bool(mask.any()):
                return torch.zeros(0, dtype=torch.int64)
            xy = g.xy_px[idx].float().contiguous()
            abc = conic(g.chol[idx].float()).contiguous()
            hit = self._ext.touching(xy, abc, box, mask)
            return idx[hit]  # idx is ascending

    def render_vjp(self, g: Gaussians, height: int, width: int) -> tuple[Tensor, VjpFn]:
        """The picture of ``g`` (float32 [H, W, 3], bit-identical to :meth:`render`) and a
        function from d loss / d picture to the gradients of ``g``'s rows (zero for rows that
        draw nothing), without an autograd graph."""
        _check_size(height, width)
        with torch.no_grad():
            g = g.detach()
            idx, box = drawable_boxes(self._ext, g, height, width)
            xy = g.xy_px[idx].float().contiguous()
            chol = g.chol[idx].float()
            abc = conic(chol).contiguous()
            rgb = g.rgb[idx].float().contiguous()
            img, start, ids = self._ext.render_forward(xy, abc, rgb, box, height, width, True)
        n = len(g)

        def vjp(grad_img: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            # one C++ call: backward, the conic's chain rule, scatter to the N rows
            grads = self._ext.render_backward_rows(
                xy, abc, rgb, box, start, ids, grad_img, chol.contiguous(), idx, n
            )  # [N, 8]
            return grads[:, 0:2], grads[:, 2:5], grads[:, 5:8]

        return img, vjp

    def residual_stats(
        self, img: Tensor, target: Tensor, changed: Tensor | None, threshold: float
    ) -> tuple[float, float, int, Tensor]:
        """See :class:`codec.render.base.GradBackend` (one C++ pass over the pixels)."""
        mask = changed if changed is not None else torch.zeros(0, dtype=torch.bool)
        stats, grad = self._ext.residual_stats(img, target, mask, float(threshold), True)
        sse, sse8, n_unresolved = stats.tolist()
        return sse, sse8, int(n_unresolved), grad
