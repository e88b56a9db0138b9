"""The frame representation: N 2D Gaussians with accumulated-summation blending.

A Gaussian ``i`` has a centre ``xy_px[i]`` in pixel units (x to the right, y
down, pixel centres at integer + 0.5), a Cholesky factor
``chol[i] = (l11, l21, l22)`` of its covariance in pixel units,

    L = [[l11, 0], [l21, l22]],   Sigma = L @ L.T,

and a colour ``rgb[i]`` in [0, 1] units with opacity folded in (seed 002,
eq. 2). A pixel's value is the plain sum over Gaussians of
``rgb[i] * exp(-0.5 * d^T Sigma^-1 d)``, with the kernel truncated to zero
outside the 3-sigma ellipse (``d^T Sigma^-1 d > 9``). The truncation is part of
the model, so a tile-binned renderer and a dense sum agree exactly.

Sigma stays positive definite because the diagonal of L is kept at least
``MIN_CHOL_DIAG`` (see :func:`Gaussians.clamped`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MIN_CHOL_DIAG = (
    0.25  # px; keeps Sigma positive definite and Gaussians at least ~a quarter pixel wide
)
SIGMA_CUTOFF_SQ = 9.0  # Mahalanobis distance squared beyond which the kernel is zero (3 sigma)


@dataclass
class Gaussians:
    """A set of N 2D Gaussians (float32 tensors on one device)."""

    xy_px: Tensor  # [N, 2] centre, pixels
    chol: Tensor  # [N, 3] (l11, l21, l22), pixels
    rgb: Tensor  # [N, 3] colour * opacity, nominally [0, 1]

    def __post_init__(self) -> None:
        n = self.xy_px.shape[0]
        if self.xy_px.shape != (n, 2) or self.chol.shape != (n, 3) or self.rgb.shape != (n, 3):
            raise ValueError(
                f"Gaussians need xy_px [N,2], chol [N,3], rgb [N,3]; got "
                f"{tuple(self.xy_px.shape)}, {tuple(self.chol.shape)}, {tuple(self.rgb.shape)}"
            )

    def __len__(self) -> int:
        return int(self.xy_px.shape[0])

    @property
    def device(self) -> torch.device:
        return self.xy_px.device

    def detach(self) -> Gaussians:
        return Gaussians(self.xy_px.detach(), self.chol.detach(), self.rgb.detach())

    def clone(self) -> Gaussians:
        return Gaussians(self.xy_px.clone(), self.chol.clone(), self.rgb.clone())

    def to(self, device: torch.device | str) -> Gaussians:
        return Gaussians(self.xy_px.to(device), self.chol.to(device), self.rgb.to(device))

    def index(self, idx: Tensor) -> Gaussians:
        """Rows ``idx`` (int64 [K] or bool [N])."""
        return Gaussians(self.xy_px[idx], self.chol[idx], self.rgb[idx])

    def clamped(self) -> Gaussians:
        """A copy with the Cholesky diagonal kept >= MIN_CHOL_DIAG (differentiable where inside)."""
        l11 = self.chol[:, 0].clamp(min=MIN_CHOL_DIAG)
        l22 = self.chol[:, 2].clamp(min=MIN_CHOL_DIAG)
        chol = torch.stack([l11, self.chol[:, 1], l22], dim=1)
        return Gaussians(self.xy_px, chol, self.rgb)

    @staticmethod
    def cat(parts: list[Gaussians]) -> Gaussians:
        return Gaussians(
            torch.cat([p.xy_px for p in parts]),
            torch.cat([p.chol for p in parts]),
            torch.cat([p.rgb for p in parts]),
        )

    @staticmethod
    def empty(device: torch.device | str = "cpu") -> Gaussians:
        z2 = torch.zeros(0, 2, device=device)
        z3 = torch.zeros(0, 3, device=device)
        return Gaussians(z2, z3, z3.clone())


def covariance(chol: Tensor) -> Tensor:
    """Sigma = L L^T as [N, 3] (s_xx, s_xy, s_yy) from chol [N, 3]."""
    l11, l21, l22 = chol.unbind(dim=1)
    return torch.stack([l11 * l11, l11 * l21, l21 * l21 + l22 * l22], dim=1)


def conic(chol: Tensor) -> Tensor:
    """Sigma^-1 as [N, 3] (a, b, c) so that d^T Sigma^-1 d = a dx^2 + 2 b dx dy + c dy^2."""
    s = covariance(chol)
    sxx, sxy, syy = s.unbind(dim=1)
    det = sxx * syy - sxy * sxy
    return torch.stack([syy / det, -sxy / det, sxx / det], dim=1)


def radius_3sigma(chol: Tensor) -> Tensor:
    """Half-extent [N, 2] (rx, ry) in pixels of the axis-aligned box around the 3-sigma ellipse."""
    s = covariance(chol)
    return 3.0 * torch.stack([s[:, 0].sqrt(), s[:, 2].sqrt()], dim=1)


def change_energy(old: Gaussians, new: Gaussians) -> Tensor:
    """Per-row energy [N] of the change in rendered contribution, integral of |c' g'(x) - c g(x)|^2 dx.

    Closed form for untruncated Gaussians g(x) = exp(-0.5 (x-mu)^T Sigma^-1 (x-mu)):
    integral g_a g_b = 2 pi sqrt(|Sa| |Sb| / |Sa + Sb|) exp(-0.5 d^T (Sa + Sb)^-1 d), so
    the energy is |c_a|^2 I_aa + |c_b|^2 I_bb - 2 c_a . c_b I_ab. Units: colour^2 * px^2
    (multiply by 255^2 for 8-bit levels). Used to drop P-frame updates that change almost nothing.
    """
    sa, sb = covariance(old.chol), covariance(new.chol)

    def det(s: Tensor) -> Tensor:
        return (s[:, 0] * s[:, 2] - s[:, 1] * s[:, 1]).clamp(min=1e-12)

    ssum = sa + sb
    d = new.xy_px - old.xy_px
    det_sum = det(ssum)
    # d^T (Sa + Sb)^-1 d with the 2x2 inverse written out
    maha = (
        ssum[:, 2] * d[:, 0] ** 2 - 2 * ssum[:, 1] * d[:, 0] * d[:, 1] + ssum[:, 0] * d[:, 1] ** 2
    ) / det_sum
    i_ab = 2 * torch.pi * torch.sqrt(det(sa) * det(sb) / det_sum) * torch.exp(-0.5 * maha)
    i_aa = torch.pi * det(sa).sqrt()
    i_bb = torch.pi * det(sb).sqrt()
    ca, cb = old.rgb, new.rgb
    energy = (ca * ca).sum(1) * i_aa + (cb * cb).sum(1) * i_bb - 2 * (ca * cb).sum(1) * i_ab
    return energy.clamp(min=0.0)
