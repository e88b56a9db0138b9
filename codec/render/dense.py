"""Dense brute-force reference: every Gaussian against every pixel.

O(N * H * W) memory and time; the ground truth for tests of the real backends.
"""

from __future__ import annotations

import torch
from torch import Tensor

from codec.gaussians import SIGMA_CUTOFF_SQ, Gaussians, conic


def pixel_centres(height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates (x [H, W], y [H, W]) at integer + 0.5."""
    ys = torch.arange(height, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=device, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return x, y


def mahalanobis_sq(g: Gaussians, height: int, width: int) -> Tensor:
    """d^T Sigma^-1 d for every Gaussian and pixel: [N, H, W]."""
    x, y = pixel_centres(height, width, g.device)
    a, b, c = conic(g.chol).unbind(dim=1)
    dx = x[None] - g.xy_px[:, 0, None, None]
    dy = y[None] - g.xy_px[:, 1, None, None]
    return a[:, None, None] * dx * dx + 2 * b[:, None, None] * dx * dy + c[:, None, None] * dy * dy


def render_dense(g: Gaussians, height: int, width: int) -> Tensor:
    """Float32 [H, W, 3] by summing every (truncated) Gaussian at every pixel."""
    m = mahalanobis_sq(g, height, width)
    w = torch.where(m <= SIGMA_CUTOFF_SQ, torch.exp(-0.5 * m), torch.zeros_like(m))
    return torch.einsum("nhw,nc->hwc", w, g.rgb)


class DenseBackend:
    """Backend wrapper around :func:`render_dense` (tests and tiny frames only)."""

    name = "dense"

    def render(self, g: Gaussians, height: int, width: int) -> Tensor:
        return render_dense(g, height, width)

    def render_nograd(self, g: Gaussians, height: int, width: int) -> Tensor:
        with torch.no_grad():
            return render_dense(g, height, width)

    def gaussians_touching(self, g: Gaussians, pixel_mask: Tensor) -> Tensor:
        with torch.no_grad():
            h, w = pixel_mask.shape
            inside = mahalanobis_sq(g, h, w) <= SIGMA_CUTOFF_SQ  # [N, H, W]
            hit = (inside & pixel_mask[None]).flatten(1).any(dim=1)
            return torch.nonzero(hit).flatten()
