"""The tile-binned ``torch`` backend against the dense brute-force reference."""

from __future__ import annotations

import math

import pytest
import torch

from codec.gaussians import Gaussians
from codec.render import get_backend, torch_tiles
from codec.render.dense import DenseBackend, render_dense
from codec.render.torch_tiles import TorchTileBackend, pixel_boxes

BACKEND = TorchTileBackend()
DENSE = DenseBackend()


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


@pytest.mark.parametrize(
    ("height", "width", "n"),
    [(23, 37, 150), (16, 16, 40), (48, 64, 300), (1, 1, 10), (5, 70, 60), (33, 17, 80)],
)
def test_forward_matches_dense(height: int, width: int, n: int) -> None:
    g = random_gaussians(n, height, width, seed=height * 1000 + width)
    out = BACKEND.render(g, height, width)
    assert out.shape == (height, width, 3) and out.dtype == torch.float32
    ref = render_dense(g, height, width)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(BACKEND.render_nograd(g, height, width), ref, atol=1e-5, rtol=1e-5)
    assert out.abs().sum() > 0


def test_small_chunks_split_gaussians_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunk boundaries that cut through a Gaussian's tiles or a patch bucket change nothing."""
    monkeypatch.setattr(torch_tiles, "_PAIR_CHUNK", 7)
    monkeypatch.setattr(torch_tiles, "_PATCH_CHUNK", 300)
    g64 = random_gaussians(60, 40, 52, seed=23, dtype=torch.float64, sigma=(0.5, 9.0))
    weight = torch.randn(
        40, 52, 3, generator=torch.Generator().manual_seed(24), dtype=torch.float64
    )
    grads = []
    for render in (BACKEND.render, render_dense):
        g = with_grad(g64)
        out = render(g, 40, 52)
        grads.append(torch.autograd.grad((out * weight).sum(), [g.xy_px, g.chol, g.rgb]))
    for ours, ref in zip(*grads, strict=True):
        assert torch.allclose(ours, ref, atol=1e-9, rtol=1e-7)
    ref_img = render_dense(g64, 40, 52)
    assert torch.allclose(BACKEND.render(g64, 40, 52), ref_img, atol=1e-12)
    assert torch.allclose(BACKEND.render_nograd(g64, 40, 52), ref_img, atol=1e-12)
    mask = torch.rand(40, 52, generator=torch.Generator().manual_seed(25)) < 0.02
    assert torch.equal(BACKEND.gaussians_touching(g64, mask), DENSE.gaussians_touching(g64, mask))


def test_get_backend_returns_tile_backend() -> None:
    backend = get_backend("torch")
    assert isinstance(backend, TorchTileBackend) and backend.name == "torch"


def test_gaussians_partly_and_fully_outside_the_frame() -> None:
    height, width = 21, 30
    xy = torch.tensor(
        [
            [-2.0, 10.0],
            [31.0, 5.0],
            [15.0, -3.0],
            [10.0, 22.5],
            [-30.0, 5.0],
            [15.0, 80.0],
            [0.0, 0.0],
        ]
    )
    chol = torch.tensor([[2.0, 0.5, 1.5]] * 7)
    rgb = torch.rand(7, 3, generator=torch.Generator().manual_seed(1))
    g = Gaussians(xy, chol, rgb)
    ref = render_dense(g, height, width)
    assert torch.allclose(BACKEND.render(g, height, width), ref, atol=1e-6)
    assert torch.allclose(BACKEND.render_nograd(g, height, width), ref, atol=1e-6)
    idx, _ = pixel_boxes(g, height, width)
    assert idx.tolist() == [0, 1, 2, 3, 6]  # the two far-away ones are culled


def test_more_than_256_gaussians_on_one_tile() -> None:
    """600 Gaussians inside one 16x16 tile all count (no per-tile cap)."""
    gen = torch.Generator().manual_seed(7)
    n = 600
    xy = 20.0 + 8.0 * torch.rand(n, 2, generator=gen)  # all centred in tile (1, 1)
    chol = torch.stack(
        [
            0.3 + 0.7 * torch.rand(n, generator=gen),
            0.2 * torch.randn(n, generator=gen),
            0.3 + 0.7 * torch.rand(n, generator=gen),
        ],
        dim=1,
    )
    rgb = torch.rand(n, 3, generator=gen) / n
    g = Gaussians(xy, chol, rgb).clamped()
    ref = render_dense(g, 48, 48)
    out = BACKEND.render(g, 48, 48)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(BACKEND.render_nograd(g, 48, 48), ref, atol=1e-6)
    # dropping any Gaussian visibly changes the tile
    assert (out - BACKEND.render(g.index(torch.arange(256)), 48, 48)).abs().max() > 1e-3


def test_truncation_is_inclusive_at_three_sigma() -> None:
    """A pixel at exactly m == 9 gets exp(-4.5); one just beyond gets nothing."""
    # Sigma = 0.25 I: m = 4 d^2, so d = 1.5 px is exactly m = 9
    g = Gaussians(torch.tensor([[10.0, 10.5]]), torch.tensor([[0.5, 0.0, 0.5]]), torch.ones(1, 3))
    for out in (BACKEND.render(g, 20, 20), BACKEND.render_nograd(g, 20, 20)):
        assert out[10, 8, 0].item() == pytest.approx(math.exp(-4.5), rel=1e-6)  # dx = -1.5
        assert out[10, 11, 0].item() == pytest.approx(math.exp(-4.5), rel=1e-6)  # dx = +1.5
        assert out[10, 7, 0].item() == 0.0 and out[10, 12, 0].item() == 0.0
        assert torch.equal(out, render_dense(g, 20, 20))


@pytest.mark.parametrize(("height", "width"), [(23, 37), (32, 48)])
def test_backward_matches_dense(height: int, width: int) -> None:
    g64 = random_gaussians(120, height, width, seed=3, dtype=torch.float64)
    weight = torch.randn(
        height, width, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64
    )
    grads = []
    for render in (BACKEND.render, render_dense):
        g = with_grad(g64)
        loss = (render(g, height, width) * weight).sum() + (render(g, height, width) ** 2).mean()
        grads.append(torch.autograd.grad(loss, [g.xy_px, g.chol, g.rgb]))
    for ours, ref in zip(*grads, strict=True):
        assert ours.dtype == torch.float64
        assert torch.allclose(ours, ref, atol=1e-9, rtol=1e-7)
        assert ref.abs().max() > 0


def test_backward_float32_matches_dense() -> None:
    g32 = random_gaussians(200, 40, 56, seed=11)
    target = torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(12))
    grads = []
    for render in (BACKEND.render, render_dense):
        g = with_grad(g32)
        loss = ((render(g, 40, 56) - target) ** 2).mean()
        grads.append(torch.autograd.grad(loss, [g.xy_px, g.chol, g.rgb]))
    for ours, ref in zip(*grads, strict=True):
        assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-4)


def test_gradcheck_tiny() -> None:
    """Finite differences on a frame small enough that no pixel reaches the 3-sigma cutoff."""
    gen = torch.Generator().manual_seed(5)
    xy = torch.tensor([[3.0, 2.5], [1.2, 4.1]], dtype=torch.float64, requires_grad=True)
    chol = torch.tensor(
        [[4.0, 0.7, 3.5], [3.0, -0.4, 5.0]], dtype=torch.float64, requires_grad=True
    )
    rgb = torch.rand(2, 3, generator=gen, dtype=torch.float64).requires_grad_(True)

    def fn(xy: torch.Tensor, chol: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        return BACKEND.render(Gaussians(xy, chol, rgb), 5, 6)

    assert torch.autograd.gradcheck(fn, (xy, chol, rgb), eps=1e-6, atol=1e-6)


def test_render_nograd_equals_render_and_is_deterministic() -> None:
    height, width = 72, 90
    g = random_gaussians(900, height, width, seed=21, sigma=(0.3, 6.0))
    out = BACKEND.render(g, height, width)
    first = BACKEND.render_nograd(g, height, width)
    assert torch.allclose(first, out, atol=1e-5)
    assert not first.requires_grad
    for threads in (1, 2):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            assert torch.equal(BACKEND.render_nograd(g, height, width), first)
        finally:
            torch.set_num_threads(previous)


def test_render_nograd_ignores_grad_inputs() -> None:
    g = with_grad(random_gaussians(50, 20, 24, seed=8))
    out = BACKEND.render_nograd(g, 20, 24)
    assert out.grad_fn is None and not out.requires_grad
    assert torch.allclose(out, render_dense(g.detach(), 20, 24), atol=1e-6)


def test_large_gaussians_cover_many_tiles() -> None:
    g = random_gaussians(40, 50, 70, seed=9, sigma=(5.0, 30.0))
    ref = render_dense(g, 50, 70)
    assert torch.allclose(BACKEND.render(g, 50, 70), ref, atol=1e-5)
    assert torch.allclose(BACKEND.render_nograd(g, 50, 70), ref, atol=1e-5)


def test_empty_gaussians_give_zeros() -> None:
    g = Gaussians.empty()
    for out in (BACKEND.render(g, 7, 9), BACKEND.render_nograd(g, 7, 9)):
        assert out.shape == (7, 9, 3) and out.dtype == torch.float32
        assert torch.equal(out, torch.zeros(7, 9, 3))
    assert BACKEND.gaussians_touching(g, torch.ones(7, 9, dtype=torch.bool)).shape == (0,)


def test_all_gaussians_culled_still_backpropagates() -> None:
    g = with_grad(
        Gaussians(torch.tensor([[-50.0, -50.0]]), torch.tensor([[1.0, 0.0, 1.0]]), torch.ones(1, 3))
    )
    out = BACKEND.render(g, 8, 8)
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
    ref = render_dense(good, height, width)
    out = BACKEND.render(g, height, width)
    assert torch.isfinite(out).all() and torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(BACKEND.render_nograd(g, height, width), ref, atol=1e-5)
    out.square().sum().backward()
    for t in (g.xy_px, g.chol, g.rgb):
        assert t.grad is not None and torch.isfinite(t.grad).all()
        assert torch.equal(t.grad[30:], torch.zeros_like(t.grad[30:]))


def test_giant_gaussian_is_clipped_to_the_frame() -> None:
    g = Gaussians(
        torch.tensor([[30.0, 20.0], [0.0, 0.0]]),
        torch.tensor([[1e6, 0.0, 1e6], [1e15, 3.0, 1e15]]),
        torch.tensor([[0.5, 0.25, 1.0], [0.1, 0.1, 0.1]]),
    )
    ref = render_dense(g, 37, 45)
    assert torch.allclose(BACKEND.render(g, 37, 45), ref, atol=1e-6)
    assert torch.allclose(BACKEND.render_nograd(g, 37, 45), ref, atol=1e-6)
    _, box = pixel_boxes(g, 37, 45)
    assert box.tolist() == [[0, 44, 0, 36], [0, 44, 0, 36]]


@pytest.mark.parametrize(
    ("height", "width", "density"), [(23, 37, 0.05), (40, 40, 0.002), (30, 50, 0.5)]
)
def test_gaussians_touching_matches_dense(height: int, width: int, density: float) -> None:
    g = random_gaussians(250, height, width, seed=17, sigma=(0.25, 3.0))
    gen = torch.Generator().manual_seed(18)
    mask = torch.rand(height, width, generator=gen) < density
    ours = BACKEND.gaussians_touching(g, mask)
    ref = DENSE.gaussians_touching(g, mask)
    assert ours.dtype == torch.int64
    assert torch.equal(ours, ref)
    assert torch.equal(ours, torch.sort(ours).values)
    assert 0 < ours.numel() < len(g)


def test_gaussians_touching_single_pixel_and_empty_mask() -> None:
    # the ellipse reaches pixel (row 10, col 8) exactly at m == 9, and not (10, 7)
    g = Gaussians(
        torch.tensor([[10.0, 10.5], [30.0, 30.0]]),
        torch.tensor([[0.5, 0.0, 0.5], [1.0, 0.0, 1.0]]),
        torch.ones(2, 3),
    )
    mask = torch.zeros(40, 40, dtype=torch.bool)
    assert BACKEND.gaussians_touching(g, mask).tolist() == []
    mask[10, 8] = True
    assert BACKEND.gaussians_touching(g, mask).tolist() == [0]
    mask[10, 8], mask[10, 7] = False, True
    assert BACKEND.gaussians_touching(g, mask).tolist() == []
    mask[:] = True
    assert BACKEND.gaussians_touching(g, mask).tolist() == [0, 1]


def test_bad_frame_size_raises() -> None:
    with pytest.raises(ValueError):
        BACKEND.render(Gaussians.empty(), 0, 5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_is_deterministic() -> None:
    g = random_gaussians(2000, 100, 130, seed=31, sigma=(0.3, 8.0))
    ref = BACKEND.render(g, 100, 130)
    gc = with_grad(g.to("cuda"))
    out = BACKEND.render(gc, 100, 130)
    assert out.device.type == "cuda"
    assert torch.allclose(out.cpu(), ref, atol=1e-5)
    out.square().sum().backward()
    assert gc.xy_px.grad is not None and torch.isfinite(gc.xy_px.grad).all()
    first = BACKEND.render_nograd(gc, 100, 130)
    assert torch.allclose(first.cpu(), ref, atol=1e-5)
    assert torch.equal(BACKEND.render_nograd(gc, 100, 130), first)
    mask = torch.rand(100, 130, generator=torch.Generator().manual_seed(2)) < 0.01
    assert torch.equal(
        BACKEND.gaussians_touching(gc, mask).cpu(), BACKEND.gaussians_touching(g, mask)
    )
