"""The patch-row ``patch`` backend against the dense reference and the tile backend."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from codec.gaussians import Gaussians, conic
from codec.render import available_backends, get_backend, torch_patches
from codec.render.dense import DenseBackend, mahalanobis_sq, render_dense
from codec.render.torch_patches import PatchBackend
from codec.render.torch_tiles import TorchTileBackend, pixel_boxes
from tests.codec.test_render import random_gaussians, with_grad

PATCH = PatchBackend()
TILES = TorchTileBackend()
DENSE = DenseBackend()


Render = Callable[[Gaussians, int, int], torch.Tensor]


def grads_of(
    render: Render, g: Gaussians, height: int, width: int, weight: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """(image, d loss/d xy, d loss/d chol, d loss/d rgb) for a loss with a non-trivial gradient."""
    gg = with_grad(g)
    out = render(gg, height, width)
    loss = (out * weight).sum() + (out**2).mean()
    return (out.detach(), *torch.autograd.grad(loss, [gg.xy_px, gg.chol, gg.rgb]))


def assert_matches_dense(g: Gaussians, height: int, width: int, seed: int) -> None:
    """Image and gradients of the patch backend equal the dense reference's (float64)."""
    weight = torch.randn(
        height, width, 3, generator=torch.Generator().manual_seed(seed), dtype=g.xy_px.dtype
    )
    ours = grads_of(PATCH.render, g, height, width, weight)
    ref = grads_of(render_dense, g, height, width, weight)
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-7)
    assert ref[0].abs().max() > 0 and ref[1].abs().max() > 0


@pytest.mark.parametrize(
    ("height", "width", "n"),
    [(23, 37, 150), (16, 16, 40), (48, 64, 300), (1, 1, 10), (5, 70, 60), (33, 17, 80), (2, 3, 7)],
)
def test_forward_and_backward_match_dense(height: int, width: int, n: int) -> None:
    """Odd frame sizes, centres up to 10 px outside the frame, sigma 0.3-9 px."""
    g = random_gaussians(
        n, height, width, seed=height * 1000 + width, dtype=torch.float64, sigma=(0.3, 9.0)
    )
    assert_matches_dense(g, height, width, seed=n)


def test_float32_forward_and_backward_match_dense() -> None:
    g = random_gaussians(200, 40, 56, seed=11)
    target = torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(12))
    results = []
    for render in (PATCH.render, render_dense):
        gg = with_grad(g)
        out = render(gg, 40, 56)
        loss = ((out - target) ** 2).mean()
        results.append((out.detach(), *torch.autograd.grad(loss, [gg.xy_px, gg.chol, gg.rgb])))
    assert results[0][0].dtype == torch.float32
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    for ours, ref in zip(results[0][1:], results[1][1:], strict=True):
        assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-4)


def test_gaussians_outside_the_frame_and_culled() -> None:
    xy = torch.tensor(
        [
            [-2.0, 10.0],
            [31.0, 5.0],
            [15.0, -3.0],
            [10.0, 22.5],
            [-30.0, 5.0],
            [15.0, 80.0],
            [0.0, 0.0],
        ],
        dtype=torch.float64,
    )
    chol = torch.tensor([[2.0, 0.5, 1.5]] * 7, dtype=torch.float64)
    rgb = torch.rand(7, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = Gaussians(xy, chol, rgb)
    assert_matches_dense(g, 21, 30, seed=2)
    _, d_xy, d_chol, d_rgb = grads_of(
        PATCH.render, g, 21, 30, torch.ones(21, 30, 3, dtype=torch.float64)
    )
    for grad in (d_xy, d_chol, d_rgb):  # the two far-away ones are culled: no gradient
        assert torch.equal(grad[[4, 5]], torch.zeros_like(grad[[4, 5]]))
        assert grad[[0, 1, 2, 3, 6]].abs().sum(1).min() > 0


def test_600_gaussians_on_one_tile() -> None:
    """No per-tile cap: every one of 600 Gaussians inside one 16x16 tile counts."""
    gen = torch.Generator().manual_seed(7)
    n = 600
    xy = 20.0 + 8.0 * torch.rand(n, 2, generator=gen, dtype=torch.float64)
    chol = torch.stack(
        [
            0.3 + 0.7 * torch.rand(n, generator=gen, dtype=torch.float64),
            0.2 * torch.randn(n, generator=gen, dtype=torch.float64),
            0.3 + 0.7 * torch.rand(n, generator=gen, dtype=torch.float64),
        ],
        dim=1,
    )
    rgb = torch.rand(n, 3, generator=gen, dtype=torch.float64) / n
    g = Gaussians(xy, chol, rgb).clamped()
    assert_matches_dense(g, 48, 48, seed=8)
    out = PATCH.render(g, 48, 48)
    assert (out - PATCH.render(g.index(torch.arange(256)), 48, 48)).abs().max() > 1e-3


def test_mixed_sizes_with_giant_gaussians() -> None:
    """Sub-pixel to frame-covering Gaussians, one far larger than the frame."""
    small = random_gaussians(80, 37, 45, seed=31, dtype=torch.float64, sigma=(0.25, 2.0))
    large = random_gaussians(20, 37, 45, seed=32, dtype=torch.float64, sigma=(5.0, 30.0))
    giant = Gaussians(
        torch.tensor([[30.0, 20.0], [-5.0, 50.0]], dtype=torch.float64),
        torch.tensor([[1e4, 3.0, 2e4], [60.0, -20.0, 40.0]], dtype=torch.float64),
        torch.tensor([[0.5, 0.25, 1.0], [0.1, 0.2, 0.3]], dtype=torch.float64),
    )
    g = Gaussians.cat([small, large, giant])
    _, box = pixel_boxes(g, 37, 45)
    assert box[-2].tolist() == [0, 44, 0, 36]  # clipped to the frame
    assert_matches_dense(g, 37, 45, seed=33)


def test_chunks_split_patch_rows_and_backward_recomputes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunk boundaries through a Gaussian's patch rows, and weights recomputed in backward
    (nothing kept from the forward) give the same image and gradients."""
    g = random_gaussians(60, 40, 52, seed=23, dtype=torch.float64, sigma=(0.5, 9.0))
    weight = torch.randn(
        40, 52, 3, generator=torch.Generator().manual_seed(24), dtype=torch.float64
    )
    ref = grads_of(PATCH.render, g, 40, 52, weight)
    monkeypatch.setattr(torch_patches, "_CHUNK", 7)
    monkeypatch.setattr(torch_patches, "_SAVE_LIMIT", 50)
    plan = torch_patches._make_plan(pixel_boxes(g, 40, 52)[1], 40, 52)
    assert len(plan.chunks) > 20 and sum(r1 - r0 for r0, r1, _ in plan.chunks) == plan.gid.shape[0]
    ours = grads_of(PATCH.render, g, 40, 52, weight)
    for a, b in zip(ours, ref, strict=True):
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-10)
    dense = grads_of(render_dense, g, 40, 52, weight)
    for a, b in zip(ours, dense, strict=True):
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-7)


def test_truncation_decisions_are_bit_identical_to_the_tile_path() -> None:
    """Rendered one at a time (so no sums to reorder), every Gaussian, including nearly
    singular ones and one reaching m == 9 exactly on pixel centres, gives the tile path's
    bits, forward and in render_nograd."""
    g = random_gaussians(40, 30, 41, seed=41, sigma=(0.3, 7.0))
    edge = Gaussians(
        torch.tensor([[10.0, 10.5]]), torch.tensor([[0.5, 0.0, 0.5]]), torch.ones(1, 3)
    )
    thin = Gaussians(
        torch.tensor([[20.3, 14.7], [5.5, 20.2]]),
        torch.tensor([[12.0, 11.99, 0.25], [3.0, -30.0, 0.25]]),
        torch.tensor([[1.0, 0.5, 0.25], [0.3, 0.6, 0.9]]),
    )
    g = Gaussians.cat([g, edge, thin])
    for i in range(len(g)):
        one = g.index(torch.tensor([i]))
        ours = PATCH.render(one, 30, 41)
        assert torch.equal(ours, TILES.render(one, 30, 41))
        assert torch.equal(ours, TILES.render_nograd(one, 30, 41))
    out = PATCH.render(edge, 20, 20)
    assert out[10, 8, 0].item() == pytest.approx(math.exp(-4.5), rel=1e-6)  # m == 9
    assert out[10, 7, 0].item() == 0.0 and out[10, 12, 0].item() == 0.0


def test_log_kernel_is_bitwise_minus_half_dense_m_inside_the_box() -> None:
    """Every evaluated patch pixel: h == -m/2 of the dense reference bit for bit inside the
    box, and far below the cutoff past the box's last column (padding)."""
    height, width = 26, 35
    g = random_gaussians(120, height, width, seed=81, sigma=(0.25, 6.0))
    idx, box = pixel_boxes(g, height, width)
    plan = torch_patches._make_plan(box, height, width)
    idx = idx[plan.order]
    table = torch_patches._RowTable(plan, g.xy_px[idx], conic(g.chol[idx]), g.rgb[idx])
    m = mahalanobis_sq(g, height, width)  # [N, H, W]
    n_in = n_past = 0
    for r0, r1, pw in plan.chunks:
        qf, dx, _ = table.columns(r0, r1, pw)
        h = table.log_kernel(r0, r1, qf, dx)  # [PW, Rc]
        cols = plan.x0[r0:r1] + torch.arange(pw)[:, None]  # [PW, Rc]
        inside = cols <= plan.x0[r0:r1] + plan.last[r0:r1]
        rows = plan.row[r0:r1].expand_as(cols)
        gauss = idx[plan.gid[r0:r1]].expand_as(cols)
        ref = -0.5 * m[gauss[inside], rows[inside], cols[inside]]
        assert torch.equal(h[inside], ref)
        assert (h[~inside] <= -1e30).all()
        n_in, n_past = n_in + int(inside.sum()), n_past + int((~inside).sum())
    box_area = ((box[:, 1] - box[:, 0] + 1) * (box[:, 3] - box[:, 2] + 1)).sum()
    assert n_in == int(box_area) and n_past > 0


def test_matches_tile_backend_and_render_nograd_is_the_tile_one() -> None:
    height, width = 72, 90
    g = random_gaussians(900, height, width, seed=21, sigma=(0.3, 6.0))
    out = PATCH.render(g, height, width)
    assert torch.allclose(out, TILES.render(g, height, width), atol=1e-5, rtol=1e-5)
    nograd = PATCH.render_nograd(g, height, width)
    assert torch.equal(nograd, TILES.render_nograd(g, height, width))
    assert torch.allclose(out, nograd, atol=1e-5, rtol=1e-5)
    assert not nograd.requires_grad
    mask = torch.rand(height, width, generator=torch.Generator().manual_seed(22)) < 0.05
    touching = PATCH.gaussians_touching(g, mask)
    assert torch.equal(touching, DENSE.gaussians_touching(g, mask))
    assert 0 < touching.numel() < len(g)


def test_render_is_deterministic() -> None:
    height, width = 61, 75
    g = random_gaussians(700, height, width, seed=51, sigma=(0.3, 8.0))
    target = torch.rand(height, width, 3, generator=torch.Generator().manual_seed(52))
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            gg = with_grad(g)
            out = PATCH.render(gg, height, width)
            grads = torch.autograd.grad(((out - target) ** 2).sum(), [gg.xy_px, gg.chol, gg.rgb])
            results.append((out.detach(), *grads))
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def test_gradcheck_tiny() -> None:
    """Finite differences on a frame small enough that no pixel reaches the 3-sigma cutoff."""
    gen = torch.Generator().manual_seed(5)
    xy = torch.tensor([[3.0, 2.5], [1.2, 4.1]], dtype=torch.float64, requires_grad=True)
    chol = torch.tensor(
        [[4.0, 0.7, 3.5], [3.0, -0.4, 5.0]], dtype=torch.float64, requires_grad=True
    )
    rgb = torch.rand(2, 3, generator=gen, dtype=torch.float64).requires_grad_(True)

    def fn(xy: torch.Tensor, chol: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        return PATCH.render(Gaussians(xy, chol, rgb), 5, 6)

    assert torch.autograd.gradcheck(fn, (xy, chol, rgb), eps=1e-6, atol=1e-6)


def test_gradient_only_for_some_inputs() -> None:
    g = random_gaussians(30, 20, 24, seed=61)
    rgb = g.rgb.clone().requires_grad_(True)
    out = PATCH.render(Gaussians(g.xy_px, g.chol, rgb), 20, 24)
    out.sum().backward()
    expected = render_dense(g, 20, 24)
    assert rgb.grad is not None and torch.allclose(out.detach(), expected, atol=1e-6)
    # d sum / d rgb_i = total weight of Gaussian i, the same in every channel
    assert torch.allclose(rgb.grad[:, 0], rgb.grad[:, 2]) and rgb.grad.sum() > 0


def test_empty_and_all_culled() -> None:
    for out in (
        PATCH.render(Gaussians.empty(), 7, 9),
        PATCH.render_nograd(Gaussians.empty(), 7, 9),
    ):
        assert out.shape == (7, 9, 3) and out.dtype == torch.float32
        assert torch.equal(out, torch.zeros(7, 9, 3))
    assert PATCH.gaussians_touching(
        Gaussians.empty(), torch.ones(7, 9, dtype=torch.bool)
    ).shape == (0,)
    g = with_grad(
        Gaussians(torch.tensor([[-50.0, -50.0]]), torch.tensor([[1.0, 0.0, 1.0]]), torch.ones(1, 3))
    )
    out = PATCH.render(g, 8, 8)
    assert torch.equal(out, torch.zeros(8, 8, 3))
    out.sum().backward()
    assert g.xy_px.grad is not None and torch.equal(g.xy_px.grad, torch.zeros(1, 2))


def test_degenerate_gaussians_are_dropped_without_nan() -> None:
    height, width = 40, 64
    good = random_gaussians(30, height, width, seed=13)
    bad = Gaussians(
        torch.tensor(
            [[math.nan, 3.0], [10.0, math.inf], [20.0, 20.0], [30.0, 10.0], [1e30, 5.0], [5.0, 5.0]]
        ),
        torch.tensor(
            [
                [1.0, 0.0, 1.0],
                [1.0, 0.0, 1.0],
                [math.inf, 0.0, 1.0],
                [0.0, 0.0, 1.0],
                [1.0, 0.0, 1.0],
                [1.0, math.nan, 1.0],
            ]
        ),
        torch.ones(6, 3),
    )
    g = with_grad(Gaussians.cat([good, bad]))
    out = PATCH.render(g, height, width)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, render_dense(good, height, width), atol=1e-5)
    out.square().sum().backward()
    for t in (g.xy_px, g.chol, g.rgb):
        assert t.grad is not None and torch.isfinite(t.grad).all()
        assert torch.equal(t.grad[30:], torch.zeros_like(t.grad[30:]))


def test_bad_frame_size_raises() -> None:
    with pytest.raises(ValueError):
        PATCH.render(Gaussians.empty(), 0, 5)


def test_get_backend_patch() -> None:
    backend = get_backend("patch")
    assert isinstance(backend, PatchBackend) and backend.name == "patch"
    assert "patch" in available_backends()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    g = random_gaussians(2000, 100, 130, seed=71, sigma=(0.3, 8.0))
    target = torch.rand(100, 130, 3, generator=torch.Generator().manual_seed(72))
    results = []
    for device in ("cpu", "cuda"):
        gg = with_grad(g.to(device))
        out = PATCH.render(gg, 100, 130)
        assert out.device.type == device
        loss = ((out - target.to(device)) ** 2).sum()
        grads = torch.autograd.grad(loss, [gg.xy_px, gg.chol, gg.rgb])
        results.append([t.cpu() for t in (out.detach(), *grads)])
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
