"""Shared pieces of the renderer tests (test_render.py, test_render_patches.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from codec.gaussians import Gaussians
from codec.render.dense import render_dense

Render = Callable[[Gaussians, int, int], torch.Tensor]


def random_gaussians(
    n: int,
    height: int,
    width: int,
    *,
    seed: int,
    dtype: torch.dtype = torch.float32,
    margin: float = 10.0,
    sigma: tuple[float, float] = (0.3, 4.0),
) -> Gaussians:
    """N clamped Gaussians with centres up to ``margin`` px outside the frame."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = sigma
    size = torch.tensor([width + 2 * margin, height + 2 * margin], dtype=dtype)
    xy = torch.rand(n, 2, generator=gen, dtype=dtype) * size - margin  # [N, 2]
    l11 = lo + (hi - lo) * torch.rand(n, generator=gen, dtype=dtype)
    l22 = lo + (hi - lo) * torch.rand(n, generator=gen, dtype=dtype)
    l21 = 1.5 * torch.randn(n, generator=gen, dtype=dtype)
    chol = torch.stack([l11, l21, l22], dim=1)  # [N, 3]
    rgb = torch.rand(n, 3, generator=gen, dtype=dtype)  # [N, 3]
    return Gaussians(xy, chol, rgb).clamped()


def with_grad(g: Gaussians) -> Gaussians:
    return Gaussians(
        g.xy_px.detach().clone().requires_grad_(True),
        g.chol.detach().clone().requires_grad_(True),
        g.rgb.detach().clone().requires_grad_(True),
    )


def grads_of(
    render: Render, g: Gaussians, height: int, width: int, weight: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """(image, d loss/d xy, d loss/d chol, d loss/d rgb) for a loss with a non-trivial gradient."""
    gg = with_grad(g)
    out = render(gg, height, width)
    loss = (out * weight).sum() + (out**2).mean()
    return (out.detach(), *torch.autograd.grad(loss, [gg.xy_px, gg.chol, gg.rgb]))


def assert_matches_dense(render: Render, g: Gaussians, height: int, width: int, seed: int) -> None:
    """Image and gradients of ``render`` equal the dense reference's (float64)."""
    weight = torch.randn(
        height, width, 3, generator=torch.Generator().manual_seed(seed), dtype=g.xy_px.dtype
    )
    ours = grads_of(render, g, height, width, weight)
    ref = grads_of(render_dense, g, height, width, weight)
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-7)
    assert ref[0].abs().max() > 0 and ref[1].abs().max() > 0
