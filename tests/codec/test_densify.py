"""Densification (codec.densify): splits keep the picture, are deterministic, and the fit grows
into its budget through them."""

from __future__ import annotations

from dataclasses import replace

import torch

from codec.config import FitConfig
from codec.densify import major_variance, plan_densify, removal_cost, split_gaussians
from codec.fit import fit_iframe
from codec.gaussians import Gaussians, covariance
from codec.init import superpixel_init
from codec.render import get_backend
from tests.codec.test_init import synthetic_frame

BACKEND = get_backend("torch")


def _blobs() -> Gaussians:
    xy = torch.tensor([[20.0, 16.0], [40.0, 22.0], [12.0, 30.0]])
    chol = torch.tensor([[4.0, 1.0, 2.0], [1.0, 0.5, 3.0], [2.5, -1.5, 2.0]])
    rgb = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.3, 0.3], [-0.2, 0.4, 0.6]])
    return Gaussians(xy, chol, rgb)


def test_split_keeps_the_render_continuous_and_the_moments() -> None:
    g = _blobs()
    first, second = split_gaussians(g)
    before = BACKEND.render_nograd(g, 44, 64)
    after = BACKEND.render_nograd(Gaussians.cat([first, second]), 44, 64)
    peak = float(before.abs().max())
    assert float((after - before).abs().max()) < 0.04 * peak  # a slightly flatter peak, no seam
    assert abs(float(after.sum() / before.sum()) - 1.0) < 0.01  # colour mass kept
    # the pair's mean is the parent's centre and its covariance the parent's
    centre = 0.5 * (first.xy_px + second.xy_px)
    torch.testing.assert_close(centre, g.xy_px)
    offset = 0.5 * (first.xy_px - second.xy_px)
    pair_cov = covariance(first.chol) + torch.stack(
        [offset[:, 0] ** 2, offset[:, 0] * offset[:, 1], offset[:, 1] ** 2], dim=1
    )
    torch.testing.assert_close(pair_cov, covariance(g.chol), rtol=1e-4, atol=1e-4)
    # children are narrower along the parent's major axis
    assert bool((major_variance(first.chol) < major_variance(g.chol)).all())


def test_split_is_deterministic() -> None:
    a1, b1 = split_gaussians(_blobs())
    a2, b2 = split_gaussians(_blobs())
    for x, y in ((a1, a2), (b1, b2)):
        assert torch.equal(x.xy_px, y.xy_px) and torch.equal(x.chol, y.chol)
        assert torch.equal(x.rgb, y.rgb)


def test_removal_cost_matches_rerendering() -> None:
    g = _blobs()
    target = synthetic_frame(44, 64)
    img = BACKEND.render_nograd(g, 44, 64)
    cost = removal_cost(BACKEND, g, target - img)
    base = float(((target - img) ** 2).sum()) * 255.0**2
    for i in range(len(g)):
        rest = g.index(torch.tensor([j for j in range(len(g)) if j != i]))
        without = float(((target - BACKEND.render_nograd(rest, 44, 64)) ** 2).sum()) * 255.0**2
        # change_energy ignores the 3-sigma truncation: agreement within a few per cent
        assert abs(float(cost[i]) - (without - base)) < 0.03 * abs(without - base) + 1.0


def test_plan_splits_where_the_error_is() -> None:
    g = _blobs()
    residual = torch.zeros(44, 64, 3)
    residual[10:22, 12:28] = 0.3  # error under the first (large) Gaussian only
    plan, n_seed = plan_densify(g, residual, 5, BACKEND, prune_rgb_eps=0.0, split_share=0.5)
    assert plan.n_pruned == 0 and plan.n_split == 1 and n_seed == 1
    assert plan.split_pos.tolist() == [0]


def test_densified_fit_grows_to_its_budget_and_is_deterministic() -> None:
    frame = synthetic_frame()
    cfg = FitConfig(
        iframe_iters=30,
        densify=True,
        densify_every=10,
        densify_until_frac=0.7,
        densify_split_share=0.5,
    )
    init = superpixel_init(frame, 40, backend=BACKEND)
    runs = [fit_iframe(frame, init, cfg, BACKEND, n_max=60) for _ in range(2)]
    assert len(runs[0].gaussians) == 60
    assert torch.equal(runs[0].gaussians.xy_px, runs[1].gaussians.xy_px)
    assert torch.equal(runs[0].gaussians.rgb, runs[1].gaussians.rgb)
    plain = fit_iframe(frame, init, replace(cfg, densify=False), BACKEND)
    assert len(plain.gaussians) == 40
    assert runs[0].psnr_db > plain.psnr_db  # 20 more Gaussians where the error was
