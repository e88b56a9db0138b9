"""Rate-distortion optimised choice of what a P-frame sends.

The P-frame fit moves every Gaussian that touches changed pixels; many of those
moves are worth less than the bits they cost (a colour nudge of one level, a
position jitter the PSNR hardly sees). Because frames are rendered by accumulated
*summation*, the picture is a sum over Gaussians, so replacing Gaussian ``a`` by
``b`` changes it by exactly ``d = c_b g_b - c_a g_a``. With ``e`` the residual
(target minus the picture the current choice gives), that replacement changes the
squared error by ``-2 <e, d> + |d|^2``. The inner products of every candidate
replacement come from ONE backward pass through the differentiable renderer: each
candidate is drawn as ``+s b`` and ``-s a`` with a gate ``s = 0`` that leaves the
picture as it is, and ``dD/ds = -2 <e, d>``. ``|d|^2`` is
:func:`codec.gaussians.change_energy` in closed form.

Per updated Gaussian the encoder chooses which attribute groups to send (position,
Cholesky, colour; the others keep the reference's values) or none at all, and per
added Gaussian whether to send it. Moves are: revert one group to the reference, or
drop the update (the added Gaussian) entirely. A move is taken when the bits it
saves (:func:`update_bits`) times ``lambda`` exceed the squared error it adds
(8-bit levels^2 summed over pixels and channels): the Lagrangian rule of classic
encoders, ``J = D + lambda R``, applied per Gaussian. Every round evaluates all
moves against the same residual and takes each row's best; a few rounds let
neighbours react to each other. The clamp to [0, 1] at display time is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from codec.gaussians import Gaussians, change_energy
from codec.quant import QGaussians, QuantGrid, dequantize
from codec.render import RenderBackend

LEVELS2 = 255.0 * 255.0  # [0,1]^2 colour units -> 8-bit levels^2
ROUNDS = 3
GROUPS = ((0, 1), (2, 3, 4), (5, 6, 7))  # position, Cholesky, colour (per column: no better)
INDEX_BITS = 3.0  # bits to say which row an update touches (gap / run coding, measured 2-4)
BITS_PER_ZERO = 0.4  # a column whose delta is 0 (adaptive per-frame model, mostly zeros)
BITS_BASE = 1.5  # a non-zero delta: sign and magnitude class ...
BITS_PER_LOG2 = 1.6  # ... plus this per doubling of its magnitude
ADDED_BITS = 42.0  # one new Gaussian, intra coded (measured 35-45 bits on carphone/Megamind)


@dataclass
class RdChoice:
    """What to send: a subset of the updates (with per-group choices applied) and of the added rows."""

    keep_updates: Tensor  # int64 [K'] indices into changed_idx (ascending)
    rows: QGaussians  # K' rows: the values to send for those updates
    keep_added: Tensor  # int64 [M'] indices into added (ascending)
    est_bits: float  # estimated bits of the kept updates and added rows


def update_bits(prev_rows: Tensor, new_rows: Tensor) -> Tensor:
    """Estimated bits [K] of each update from its quantised rows (int [K, 8] each); 0 if unchanged."""
    d = (new_rows - prev_rows).abs().to(torch.float32)
    nonzero = d > 0
    per_col = torch.where(
        nonzero, BITS_BASE + BITS_PER_LOG2 * torch.log2(1.0 + d), torch.full_like(d, BITS_PER_ZERO)
    )
    return torch.where(nonzero.any(dim=1), INDEX_BITS + per_col.sum(dim=1), torch.zeros(len(d)))


def _mix(old: Tensor, new: Tensor, groups_on: Tensor) -> Tensor:
    """Rows [K, 8]: ``new``'s columns where their group is on (bool [K, 3]), else ``old``'s."""
    cols = torch.zeros_like(old, dtype=torch.bool)
    for g, group in enumerate(GROUPS):
        cols[:, list(group)] = groups_on[:, g : g + 1]
    return torch.where(cols, new, old)


def _scaled(g: Gaussians, s: Tensor) -> Gaussians:
    return Gaussians(g.xy_px, g.chol, g.rgb * s[:, None])


def rd_select(
    prev: QGaussians,
    proposed: QGaussians,
    changed_idx: Tensor,
    added: QGaussians,
    grid: QuantGrid,
    target: Tensor,
    ref_img: Tensor,
    backend: RenderBackend,
    lam_levels2_per_bit: float,
) -> RdChoice:
    """Choose what to send by ``J = D + lambda R``.

    ``prev`` is the reference state (N rows), ``proposed`` the fitted state on the same N rows
    (quantised), ``changed_idx`` int64 [K] the rows that differ, ``added`` M new rows; ``target``
    and ``ref_img`` are float32 [H, W, 3] (the frame to code, the reference's unclamped render).
    """
    h, w, _ = target.shape
    k, m = int(changed_idx.numel()), len(added)
    old_q = prev.index(changed_idx).rows()  # [K, 8]
    new_q = proposed.index(changed_idx).rows()
    if k + m == 0 or lam_levels2_per_bit <= 0:
        return RdChoice(torch.arange(k), QGaussians.from_rows(new_q), torch.arange(m), 0.0)
    old = dequantize(QGaussians.from_rows(old_q), grid)
    add = dequantize(added, grid)
    n_g = len(GROUPS)
    n_v = n_g + 1  # moves: revert one group, or drop the update
    on = torch.ones(k, n_g, dtype=torch.bool)  # groups sent per update
    add_on = torch.ones(m, dtype=torch.bool)
    base_err = (target - ref_img).detach()
    lam = lam_levels2_per_bit

    for _ in range(ROUNDS):
        cur_q = _mix(old_q, new_q, on)
        cur = dequantize(QGaussians.from_rows(cur_q), grid)
        cur_bits = update_bits(old_q, cur_q)  # [K]
        # K * V variants: each group reverted to the reference, then the update dropped
        eye = torch.eye(n_g, dtype=torch.bool)
        var_q = [_mix(old_q, new_q, on & ~eye[g]) for g in range(n_g)]
        var_q.append(old_q)
        variants = [dequantize(QGaussians.from_rows(v), grid) for v in var_q]
        saved = torch.stack([cur_bits - update_bits(old_q, v) for v in var_q], 1)  # [K, V]
        energy = torch.stack([change_energy(cur, v) for v in variants], 1) * LEVELS2  # [K, V]
        add_energy = change_energy(_scaled(add, torch.zeros(m)), add) * LEVELS2  # [M]

        gates = torch.zeros(n_v * k + m, requires_grad=True)
        one_k, one_m = torch.ones(k), add_on.to(torch.float32)
        parts = [_scaled(cur, one_k), _scaled(old, -one_k), _scaled(add, one_m)]
        for j, v in enumerate(variants):
            s = gates[j * k : (j + 1) * k]
            parts += [_scaled(v, s), _scaled(cur, -s)]
        parts.append(_scaled(add, -gates[n_v * k :]))  # dropping an added Gaussian
        delta = backend.render(Gaussians.cat(parts), h, w)
        loss = ((base_err - delta) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, gates)
        grad = grad.detach() * LEVELS2  # dD/ds = -2 <e, d> in levels^2

        d_err = grad[: n_v * k].reshape(n_v, k).t() + energy  # [K, V] error each move adds
        benefit = lam * saved - d_err
        benefit[saved <= 0] = -torch.inf  # a move that saves nothing is never taken
        best_val, best = (
            benefit.max(dim=1) if k else (torch.zeros(0), torch.zeros(0, dtype=torch.int64))
        )
        take = best_val > 0
        drop_all = take & (best == n_g)
        revert = take & (best < n_g)
        on[drop_all] = False
        on[revert, best[revert]] = False
        add_benefit = lam * ADDED_BITS - (grad[n_v * k :] + add_energy)
        add_drop = add_on & (add_benefit > 0)
        add_on &= ~add_drop
        if not bool(take.any()) and not bool(add_drop.any()):
            break

    final_q = _mix(old_q, new_q, on)
    bits = update_bits(old_q, final_q)
    keep = torch.nonzero(bits > 0).flatten()
    keep_added = torch.nonzero(add_on).flatten()
    return RdChoice(
        keep_updates=keep,
        rows=QGaussians.from_rows(final_q[keep]),
        keep_added=keep_added,
        est_bits=float(bits.sum()) + ADDED_BITS * len(keep_added),
    )
