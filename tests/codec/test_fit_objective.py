"""The fit's objective without autograd (fused C++ backend) against autograd, and its chain rules."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from codec.config import FitConfig, QuantConfig
from codec.fit import _Objective, _quant_channels, _RateTerm
from codec.gaussians import MIN_CHOL_DIAG, Gaussians
from codec.quant import fake_quantize, make_grid
from codec.render import get_backend
from codec.render.base import GradBackend
from codec.render.fused_cpu import fused_available

pytestmark = pytest.mark.skipif(not fused_available(), reason="the C++ renderer is not built")

H, W = 37, 53  # odd, several tiles, partial edge tiles


def random_gaussians(n: int, seed: int) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([W, H])
    chol = torch.stack(
        [
            0.3 + 4.0 * torch.rand(n, generator=gen),
            torch.randn(n, generator=gen),
            0.3 + 4.0 * torch.rand(n, generator=gen),
        ],
        dim=1,
    )
    chol[0, 0] = MIN_CHOL_DIAG  # on the clamp's edge: the gradient passes (torch's clamp rule)
    chol[1, 2] = 0.1  # below it: clamped, no gradient to l22
    xy[2] = torch.tensor([-40.0, -40.0])  # draws nothing: zero gradient
    rgb = torch.rand(n, 3, generator=gen) - 0.3
    return Gaussians(xy, chol, rgb)


def leaves(g: Gaussians) -> Gaussians:
    return Gaussians(
        g.xy_px.clone().requires_grad_(True),
        g.chol.clone().requires_grad_(True),
        g.rgb.clone().requires_grad_(True),
    )


@pytest.mark.parametrize("with_static", [False, True])
@pytest.mark.parametrize("with_quant", [False, True])
@pytest.mark.parametrize("with_rate", [False, True])
def test_fused_objective_matches_autograd(
    with_static: bool, with_quant: bool, with_rate: bool
) -> None:
    backend = get_backend("cpu")
    assert isinstance(backend, GradBackend)
    gen = torch.Generator().manual_seed(7)
    target = torch.rand(H, W, 3, generator=gen)
    g = random_gaussians(300, 2)  # > 256 Gaussians on some tiles
    static = torch.rand(H, W, 3, generator=gen) * 0.3 if with_static else None
    fq = None
    if with_quant:
        grid = make_grid(g, H, W, QuantConfig(chol_bits=6, rgb_bits=6))
        fq = lambda x: fake_quantize(x, grid, fine=True)  # noqa: E731
    rate = None
    if with_rate:
        start = _quant_channels(g, 200) + 0.01 * torch.randn(200, 8, generator=gen)
        rate = _RateTerm(start, torch.rand(8, generator=gen) * 1e-3)
    changed = torch.rand(H, W, generator=gen) > 0.5
    kw = dict(static=static, fake_quant=fq, changed=changed, threshold=0.05, rate=rate)
    cfg = FitConfig()
    fused = _Objective(target, backend, cfg, **kw)  # type: ignore[arg-type]
    slow = _Objective(target, get_backend("torch"), cfg, **kw)  # type: ignore[arg-type]
    assert fused.fused and not slow.fused

    a, b = fused(leaves(g)), slow(leaves(g))
    assert a.loss == pytest.approx(b.loss, rel=1e-5)
    assert a.psnr_db == pytest.approx(b.psnr_db, abs=1e-4)
    assert abs(a.n_unresolved - b.n_unresolved) <= 2  # float ties at the threshold only
    torch.testing.assert_close(a.img, b.img, rtol=1e-5, atol=1e-5)
    for got, want in zip(a.grads(), b.grads(), strict=True):
        assert got is not None and want is not None
        torch.testing.assert_close(got, want, rtol=2e-3, atol=1e-6)
    g_chol = a.grads()[1]
    assert g_chol is not None and g_chol[1, 2] == 0.0  # clamped below MIN_CHOL_DIAG
    if not with_rate:  # row 2 draws nothing: only the rate term could move it
        assert all(t is not None and bool((t[2] == 0).all()) for t in a.grads())


def test_ssim_objective_uses_autograd() -> None:
    cfg = replace(FitConfig(), ssim_weight=0.2)
    target = torch.rand(H, W, 3)
    assert not _Objective(target, get_backend("cpu"), cfg).fused


def test_fused_objective_is_deterministic() -> None:
    backend = get_backend("cpu")
    target = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(3))
    g = random_gaussians(120, 4)
    one = _Objective(target, backend, FitConfig())(leaves(g))
    two = _Objective(target, backend, FitConfig())(leaves(g))
    assert one.loss == two.loss and one.psnr_db == two.psnr_db
    for x, y in zip(one.grads(), two.grads(), strict=True):
        assert x is not None and y is not None and torch.equal(x, y)
