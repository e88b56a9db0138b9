"""The renderer interface every backend implements.

Callers (fitting, decoding) only ever see :class:`RenderBackend`; backends are
picked by name through :func:`codec.render.get_backend`. A backend must be
exact for any number of Gaussians per tile and agree with the dense reference
(:mod:`codec.render.dense`) forward and backward.
"""

from __future__ import annotations

from typing import Protocol

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
