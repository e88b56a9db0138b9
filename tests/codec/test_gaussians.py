"""The representation's closed-form helpers against brute-force numerics."""

from __future__ import annotations

import torch

from codec.gaussians import Gaussians, change_energy


def _numeric_energy(
    old: Gaussians, new: Gaussians, extent: float = 60.0, step: float = 0.1
) -> torch.Tensor:
    """Integral of |c' g'(x) - c g(x)|^2 over a fine grid (untruncated Gaussians), per row."""
    axis = torch.arange(-extent, extent, step, dtype=torch.float64)
    y, x = torch.meshgrid(axis, axis, indexing="ij")

    def field(g: Gaussians, i: int) -> torch.Tensor:
        l11, l21, l22 = g.chol[i].double()
        sxx, sxy, syy = l11 * l11, l11 * l21, l21 * l21 + l22 * l22
        det = sxx * syy - sxy * sxy
        dx, dy = x - g.xy_px[i, 0].double(), y - g.xy_px[i, 1].double()
        m = (syy * dx * dx - 2 * sxy * dx * dy + sxx * dy * dy) / det
        return torch.exp(-0.5 * m)[..., None] * g.rgb[i].double()

    return torch.stack(
        [((field(new, i) - field(old, i)) ** 2).sum() * step * step for i in range(len(old))]
    )


def test_change_energy_matches_numeric_integral() -> None:
    gen = torch.Generator().manual_seed(3)
    n = 5
    old = Gaussians(
        torch.rand(n, 2, generator=gen) * 10 - 5,
        torch.stack(
            [
                1 + 3 * torch.rand(n, generator=gen),
                torch.randn(n, generator=gen),
                1 + 3 * torch.rand(n, generator=gen),
            ],
            1,
        ),
        torch.rand(n, 3, generator=gen),
    )
    new = Gaussians(
        old.xy_px + torch.randn(n, 2, generator=gen),
        old.chol * (1 + 0.2 * torch.rand(n, 3, generator=gen)),
        (old.rgb + 0.1 * torch.randn(n, 3, generator=gen)).clamp(0, 1),
    )
    closed = change_energy(old, new).double()
    numeric = _numeric_energy(old, new)
    torch.testing.assert_close(closed, numeric, rtol=2e-3, atol=1e-6)


def test_change_energy_is_zero_without_change() -> None:
    g = Gaussians(
        torch.tensor([[3.0, 4.0]]), torch.tensor([[2.0, 0.5, 1.5]]), torch.tensor([[0.2, 0.4, 0.9]])
    )
    assert float(change_energy(g, g)) < 1e-6
