"""The renderer interface every backend implements.

Callers (fitting, decoding) only ever see :class:`RenderBackend`; backends are
picked by name through :func:`codec.render.get_backend`. A backend must be
exact for any number of Gaussians per tile and agree with the dense reference
(:mod:`codec.render.dense`) forward and backward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from torch import Tensor

from codec.gaussians import Gaussians

TILE = 16  # px, tile edge for binning


class RenderBackend(Protocol):
    """Renders Gaussians to an image by accumulated summation (see :mod:`codec.gaussians`)."""

    name: str

    def render(self, g: Gaussians, height: int, width: int) -> Tensor:
        """Differentiable render: float32 [H, W, 3], unclamped, on ``g``'s device."""
        ...

    def render_nograd(self, g: Gaussians, height: int, width: int) -> Tensor:
        """Fast inference-only render with the same result as :meth:`render` (float32 [H, W, 3])."""
        ...

    def gaussians_touching(self, g: Gaussians, pixel_mask: Tensor) -> Tensor:
        """Indices (int64 [K], sorted) of Gaussians whose 3-sigma ellipse covers any pixel
        where ``pixel_mask`` (bool [H, W]) is True."""
        ...


# grad_img float32 [H, W, 3] -> gradients (xy [N, 2], chol [N, 3], rgb [N, 3]) of sum(grad_img * image)
VjpFn = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


@runtime_checkable
class GradBackend(Protocol):
    """A backend that also gives the fit loop its gradients without autograd (the ``cpu`` one).

    The fit's plain squared-error objective needs one forward, a few per-pixel statistics and one
    backward per step; done through autograd, the graph's bookkeeping cost more than the kernel
    at small frame sizes (BENCHMARKS.md, "Encode and decode speed on the CPU").
    """

    def render_vjp(self, g: Gaussians, height: int, width: int) -> tuple[Tensor, VjpFn]:
        """The canonical picture of ``g`` (float32 [H, W, 3], no gradient) and its pullback."""
        ...

    def residual_stats(
        self, img: Tensor, target: Tensor, changed: Tensor | None, threshold: float
    ) -> tuple[float, float, int, Tensor]:
        """(sum of squared errors, sum of squared 8-bit errors, pixels of ``changed`` whose 5x5
        mean max-over-RGB error exceeds ``threshold``, d mean-squared-error / d img)."""
        ...
