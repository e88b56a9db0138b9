"""Error-guided densification: split large Gaussians where the residual is high, seed new ones
where nothing covers it, prune what does not pay (issue 14, item 2).

Frames are rendered by *summing* Gaussians, so every decision here has a closed form or one
backward pass:

- **Split.** A Gaussian with covariance Sigma (major axis v, variance s1^2 along it) becomes two
  at ``mu +- d v`` with ``d = SPLIT_OFFSET * s1`` and covariance ``Sigma - d^2 v v^T``: the pair
  keeps the parent's mean and covariance (moment matching), and each child carries half the
  parent's colour mass, so the picture right after a split differs from before only in a slight
  flattening of the peak (continuity; ``tests/codec/test_densify.py`` bounds it). Deterministic:
  no random draw is involved.
- **Error mass** of Gaussian i: ``sum_p g_i(p) |e(p)|^2`` with ``e`` the residual, from one
  gated render: ``d/ds_i sum_p W(p) (sum_j s_j g_j(p))`` at ``s = 1`` with ``W = |e|^2``.
- **Removal cost** of Gaussian i (8-bit levels^2): how much the squared error grows without it,
  ``2 <e, c_i g_i> + |c_i g_i|^2``; the inner products come from one backward pass through a
  gated render (as in codec.rdo), ``|c_i g_i|^2`` is :func:`codec.gaussians.change_energy`.
  A Gaussian whose removal costs less than ``lambda * bits`` does not pay and is pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from codec.gaussians import MIN_CHOL_DIAG, Gaussians, change_energy, covariance
from codec.render.base import RenderBackend

LEVELS2 = 255.0 * 255.0
SPLIT_OFFSET = 0.5  # children sit at +-0.5 sigma along the major axis
SPLIT_MIN_SIGMA_PX = 1.0  # Gaussians whose major sigma is below this are not split
MAX_PRUNE_SHARE = 0.1  # at most this share of the rows is pruned per round


@dataclass
class DensifyPlan:
    """One densification round: keep rows ``keep`` (ascending), overwrite the kept rows at
    positions ``split_pos`` (into ``keep``) with ``split_first``, then append ``new`` (the second
    children of the splits, then the seeds)."""

    keep: Tensor  # int64 [K]
    split_pos: Tensor  # int64 [S]
    split_first: Gaussians  # S rows
    new: Gaussians  # S + seeds rows
    n_pruned: int
    n_split: int


def major_variance(chol: Tensor) -> Tensor:
    """Largest eigenvalue of Sigma [N] (px^2) from chol [N, 3]."""
    sxx, sxy, syy = covariance(chol).unbind(dim=1)
    return 0.5 * (sxx + syy) + torch.sqrt((0.5 * (sxx - syy)) ** 2 + sxy * sxy)


def split_gaussians(g: Gaussians) -> tuple[Gaussians, Gaussians]:
    """Each row of ``g`` as two children (first, second), moment-matched along its major axis."""
    g = g.clamped()
    sxx, sxy, syy = covariance(g.chol).unbind(dim=1)
    lam1 = major_variance(g.chol)
    # major axis: (sxy, lam1 - sxx), or (1, 0) / (0, 1) when Sigma is axis-aligned
    vx, vy = sxy, lam1 - sxx
    aligned = (vx.abs() + vy.abs()) < 1e-12
    vx = torch.where(aligned, (sxx >= syy).to(sxx.dtype), vx)
    vy = torch.where(aligned, (sxx < syy).to(sxx.dtype), vy)
    norm = torch.sqrt(vx * vx + vy * vy)
    vx, vy = vx / norm, vy / norm
    d = SPLIT_OFFSET * lam1.sqrt()
    off = torch.stack([vx * d, vy * d], dim=1)
    d2 = d * d
    nxx, nxy, nyy = sxx - d2 * vx * vx, sxy - d2 * vx * vy, syy - d2 * vy * vy
    l11 = nxx.clamp(min=MIN_CHOL_DIAG**2).sqrt()
    l21 = nxy / l11
    l22 = (nyy - l21 * l21).clamp(min=MIN_CHOL_DIAG**2).sqrt()
    chol = torch.stack([l11, l21, l22], dim=1)
    # each child carries half the parent's colour mass: c' = c sqrt(det S / det S') / 2
    det_old = (sxx * syy - sxy * sxy).clamp(min=1e-12)
    det_new = (l11 * l22) ** 2
    rgb = g.rgb * (0.5 * torch.sqrt(det_old / det_new))[:, None]
    return Gaussians(g.xy_px + off, chol, rgb), Gaussians(g.xy_px - off, chol.clone(), rgb.clone())


def _gated_grad(
    backend: RenderBackend, g: Gaussians, weight: Tensor, h: int, w: int, unit: bool
) -> Tensor:
    """``d/ds_i sum_p weight(p) . render(s)(p)`` at ``s = 1`` [N], where ``render(s)`` draws each
    Gaussian with colour ``s_i * rgb_i`` (``unit``: ``s_i * (1, 1, 1)``)."""
    gates = torch.ones(len(g), device=g.device, requires_grad=True)
    colour = torch.ones_like(g.rgb) if unit else g.rgb.detach()
    img = backend.render(
        Gaussians(g.xy_px.detach(), g.chol.detach(), colour * gates[:, None]), h, w
    )
    (grad,) = torch.autograd.grad((img * weight).sum(), gates)
    return grad.detach()


def error_mass(backend: RenderBackend, g: Gaussians, residual: Tensor) -> Tensor:
    """``sum_p g_i(p) |residual(p)|^2`` per row [N] (residual [H, W, 3], colour units^2)."""
    h, w, _ = residual.shape
    weight = residual.detach().square().sum(dim=2, keepdim=True).expand(h, w, 3) / 3.0
    return _gated_grad(backend, g.clamped(), weight, h, w, unit=True)


def removal_cost(backend: RenderBackend, g: Gaussians, residual: Tensor) -> Tensor:
    """Growth of the squared error (8-bit levels^2, summed over pixels and channels) if each row
    were removed alone [N]; ``residual`` = target - render(g), [H, W, 3]."""
    h, w, _ = residual.shape
    gc = g.clamped().detach()
    inner = _gated_grad(backend, gc, residual.detach(), h, w, unit=False)  # <e, c_i g_i>
    zero = Gaussians(gc.xy_px, gc.chol, torch.zeros_like(gc.rgb))
    return (2.0 * inner + change_energy(zero, gc)) * LEVELS2


def plan_densify(
    g: Gaussians,
    residual: Tensor,
    n_max: int,
    backend: RenderBackend,
    *,
    prune_rgb_eps: float,
    prune_cost_levels2: float = 0.0,
    split_share: float = 0.5,
) -> tuple[DensifyPlan, int]:
    """Prune, then split and choose where to seed, up to ``n_max`` rows in all.

    Pruned: rows whose largest |rgb| is below ``prune_rgb_eps`` and, with
    ``prune_cost_levels2`` > 0, rows whose removal costs less than it (the lowest first, at most
    MAX_PRUNE_SHARE of the rows). Split: of the free rows, up to ``split_share`` go to splitting
    the kept rows with the largest error mass whose major sigma is at least SPLIT_MIN_SIGMA_PX.
    Returns the plan (splits only) and the number of rows still free for seeds,
    which the caller draws from the residual (codec.fit.seed_from_residual)."""
    with torch.no_grad():
        n = len(g)
        drop = g.rgb.abs().amax(dim=1) < prune_rgb_eps
    if prune_cost_levels2 > 0 and n:
        cost = removal_cost(backend, g, residual)
        cheap = torch.nonzero((cost < prune_cost_levels2) & ~drop).flatten()
        limit = int(MAX_PRUNE_SHARE * n)
        if cheap.numel() > limit:
            cheap = cheap[torch.argsort(cost[cheap], stable=True)[:limit]]
        drop[cheap] = True
    keep = torch.nonzero(~drop).flatten()
    free = max(0, n_max - int(keep.numel()))
    kept = g.detach().index(keep)
    n_split = 0
    empty = Gaussians.empty(g.device)
    first, second, pos = empty, empty, torch.zeros(0, dtype=torch.int64, device=g.device)
    if free > 0 and len(kept) and split_share > 0:
        mass = error_mass(backend, kept, residual)
        major = major_variance(kept.clamped().chol)
        big = torch.nonzero(major >= SPLIT_MIN_SIGMA_PX**2).flatten()
        n_split = min(int(big.numel()), int(split_share * free))
        if n_split:
            order = torch.argsort(mass[big], descending=True, stable=True)[:n_split]
            pos = big[order].sort().values
            first, second = split_gaussians(kept.index(pos))
    plan = DensifyPlan(keep, pos, first, second, int(n - keep.numel()), n_split)
    return plan, free - n_split
