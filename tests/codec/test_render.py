"""Every differentiable backend (``torch`` tiles, ``patch`` rows) against the dense reference.

The behaviour all backends share runs here once per backend through the ``backend``
fixture; what only one backend has (tile-path chunking here, the patch plan and its
custom backward in test_render_patches.py) is tested against that backend alone.
"""

from __future__ import annotations

import math

import pytest
import torch

from codec.gaussians import Gaussians
from codec.render import RenderBackend, available_backends, get_backend, torch_tiles
from codec.render.dense import DenseBackend, render_dense
from codec.render.torch_patches import PatchBackend
from codec.render.torch_tiles import TorchTileBackend, pixel_boxes
from tests.codec.render_helpers import assert_matches_dense, grads_of, random_gaussians, with_grad

BACKEND = TorchTileBackend()
DENSE = DenseBackend()
BACKENDS = {"torch": TorchTileBackend, "patch": PatchBackend}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> RenderBackend:
    """Each differentiable backend, as :func:`get_backend` hands it out."""
    return get_backend(request.param)


def outside_frame_gaussians(dtype: torch.dtype = torch.float32) -> Gaussians:
    """Seven Gaussians for a 21x30 frame: partly outside, two far away (rows 4, 5), one on a corner."""
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
        dtype=dtype,
    )
    chol = torch.tensor([[2.0, 0.5, 1.5]] * 7, dtype=dtype)
    rgb = torch.rand(7, 3, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return Gaussians(xy, chol, rgb)


def one_tile_gaussians(dtype: torch.dtype = torch.float32) -> Gaussians:
    """600 small faint Gaussians, all centred in the 16x16 tile (1, 1) of a 48x48 frame."""
    gen = torch.Generator().manual_seed(7)
    n = 600
    xy = 20.0 + 8.0 * torch.rand(n, 2, generator=gen, dtype=dtype)
    chol = torch.stack(
        [
            0.3 + 0.7 * torch.rand(n, generator=gen, dtype=dtype),
            0.2 * torch.randn(n, generator=gen, dtype=dtype),
            0.3 + 0.7 * torch.rand(n, generator=gen, dtype=dtype),
        ],
        dim=1,
    )
    rgb = torch.rand(n, 3, generator=gen, dtype=dtype) / n
    return Gaussians(xy, chol, rgb).clamped()


@pytest.mark.parametrize("name", list(BACKENDS))
def test_get_backend(name: str) -> None:
    backend = get_backend(name)
    assert isinstance(backend, BACKENDS[name]) and backend.name == name
    assert name in available_backends()


@pytest.mark.parametrize(
    ("height", "width", "n"),
    [(23, 37, 150), (16, 16, 40), (48, 64, 300), (1, 1, 10), (5, 70, 60), (33, 17, 80)],
)
def test_forward_matches_dense(backend: RenderBackend, height: int, width: int, n: int) -> None:
    g = random_gaussians(n, height, width, seed=height * 1000 + width)
    out = backend.render(g, height, width)
    assert out.shape == (height, width, 3) and out.dtype == torch.float32
    ref = render_dense(g, height, width)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(backend.render_nograd(g, height, width), ref, atol=1e-5, rtol=1e-5)
    assert out.abs().sum() > 0


@pytest.mark.parametrize(
    ("height", "width", "n"),
    [(23, 37, 150), (16, 16, 40), (48, 64, 300), (1, 1, 10), (5, 70, 60), (33, 17, 80), (2, 3, 7)],
)
def test_forward_and_backward_match_dense(
    backend: RenderBackend, height: int, width: int, n: int
) -> None:
    """Odd frame sizes, centres up to 10 px outside the frame, sigma 0.3-9 px (float64)."""
    g = random_gaussians(
        n, height, width, seed=height * 1000 + width, dtype=torch.float64, sigma=(0.3, 9.0)
    )
    assert_matches_dense(backend.render, g, height, width, seed=n)


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


def test_gaussians_partly_and_fully_outside_the_frame(backend: RenderBackend) -> None:
    height, width = 21, 30
    g = outside_frame_gaussians()
    ref = render_dense(g, height, width)
    assert torch.allclose(backend.render(g, height, width), ref, atol=1e-6)
    assert torch.allclose(backend.render_nograd(g, height, width), ref, atol=1e-6)
    idx, _ = pixel_boxes(g, height, width)
    assert idx.tolist() == [0, 1, 2, 3, 6]  # the two far-away ones are culled


def test_culled_gaussians_get_no_gradient(backend: RenderBackend) -> None:
    g = outside_frame_gaussians(torch.float64)
    assert_matches_dense(backend.render, g, 21, 30, seed=2)
    _, d_xy, d_chol, d_rgb = grads_of(
        backend.render, g, 21, 30, torch.ones(21, 30, 3, dtype=torch.float64)
    )
    for grad in (d_xy, d_chol, d_rgb):  # the two far-away ones are culled: no gradient
        assert torch.equal(grad[[4, 5]], torch.zeros_like(grad[[4, 5]]))
        assert grad[[0, 1, 2, 3, 6]].abs().sum(1).min() > 0


def test_more_than_256_gaussians_on_one_tile(backend: RenderBackend) -> None:
    """600 Gaussians inside one 16x16 tile all count (no per-tile cap)."""
    g = one_tile_gaussians()
    ref = render_dense(g, 48, 48)
    out = backend.render(g, 48, 48)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(backend.render_nograd(g, 48, 48), ref, atol=1e-6)
    # dropping any Gaussian visibly changes the tile
    assert (out - backend.render(g.index(torch.arange(256)), 48, 48)).abs().max() > 1e-3


def test_more_than_256_gaussians_on_one_tile_backward(backend: RenderBackend) -> None:
    """The same in float64, gradients included."""
    g = one_tile_gaussians(torch.float64)
    assert_matches_dense(backend.render, g, 48, 48, seed=8)
    out = backend.render(g, 48, 48)
    assert (out - backend.render(g.index(torch.arange(256)), 48, 48)).abs().max() > 1e-3


def test_truncation_is_inclusive_at_three_sigma(backend: RenderBackend) -> None:
    """A pixel at exactly m == 9 gets exp(-4.5); one just beyond gets nothing."""
    # Sigma = 0.25 I: m = 4 d^2, so d = 1.5 px is exactly m = 9
    g = Gaussians(torch.tensor([[10.0, 10.5]]), torch.tensor([[0.5, 0.0, 0.5]]), torch.ones(1, 3))
    for out in (backend.render(g, 20, 20), backend.render_nograd(g, 20, 20)):
        assert out[10, 8, 0].item() == pytest.approx(math.exp(-4.5), rel=1e-6)  # dx = -1.5
        assert out[10, 11, 0].item() == pytest.approx(math.exp(-4.5), rel=1e-6)  # dx = +1.5
        assert out[10, 7, 0].item() == 0.0 and out[10, 12, 0].item() == 0.0
        assert torch.equal(out, render_dense(g, 20, 20))


@pytest.mark.parametrize(("height", "width"), [(23, 37), (32, 48)])
def test_backward_matches_dense(backend: RenderBackend, height: int, width: int) -> None:
    g64 = random_gaussians(120, height, width, seed=3, dtype=torch.float64)
    weight = torch.randn(
        height, width, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64
    )
    grads = []
    for render in (backend.render, render_dense):
        g = with_grad(g64)
        loss = (render(g, height, width) * weight).sum() + (render(g, height, width) ** 2).mean()
        grads.append(torch.autograd.grad(loss, [g.xy_px, g.chol, g.rgb]))
    for ours, ref in zip(*grads, strict=True):
        assert ours.dtype == torch.float64
        assert torch.allclose(ours, ref, atol=1e-9, rtol=1e-7)
        assert ref.abs().max() > 0


def test_float32_forward_and_backward_match_dense(backend: RenderBackend) -> None:
    g = random_gaussians(200, 40, 56, seed=11)
    target = torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(12))
    results = []
    for render in (backend.render, render_dense):
        gg = with_grad(g)
        out = render(gg, 40, 56)
        loss = ((out - target) ** 2).mean()
        results.append((out.detach(), *torch.autograd.grad(loss, [gg.xy_px, gg.chol, gg.rgb])))
    assert results[0][0].dtype == torch.float32
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    for ours, ref in zip(results[0][1:], results[1][1:], strict=True):
        assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-4)


def test_mixed_sizes_with_giant_gaussians(backend: RenderBackend) -> None:
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
    assert_matches_dense(backend.render, g, 37, 45, seed=33)


def test_gradcheck_tiny(backend: RenderBackend) -> None:
    """Finite differences on a frame small enough that no pixel reaches the 3-sigma cutoff."""
    gen = torch.Generator().manual_seed(5)
    xy = torch.tensor([[3.0, 2.5], [1.2, 4.1]], dtype=torch.float64, requires_grad=True)
    chol = torch.tensor(
        [[4.0, 0.7, 3.5], [3.0, -0.4, 5.0]], dtype=torch.float64, requires_grad=True
    )
    rgb = torch.rand(2, 3, generator=gen, dtype=torch.float64).requires_grad_(True)

    def fn(xy: torch.Tensor, chol: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        return backend.render(Gaussians(xy, chol, rgb), 5, 6)

    assert torch.autograd.gradcheck(fn, (xy, chol, rgb), eps=1e-6, atol=1e-6)


def test_render_nograd_equals_render_and_is_deterministic(backend: RenderBackend) -> None:
    height, width = 72, 90
    g = random_gaussians(900, height, width, seed=21, sigma=(0.3, 6.0))
    out = backend.render(g, height, width)
    first = backend.render_nograd(g, height, width)
    assert torch.allclose(first, out, atol=1e-5)
    assert not first.requires_grad
    for threads in (1, 2):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            assert torch.equal(backend.render_nograd(g, height, width), first)
        finally:
            torch.set_num_threads(previous)


def test_render_nograd_ignores_grad_inputs(backend: RenderBackend) -> None:
    g = with_grad(random_gaussians(50, 20, 24, seed=8))
    out = backend.render_nograd(g, 20, 24)
    assert out.grad_fn is None and not out.requires_grad
    assert torch.allclose(out, render_dense(g.detach(), 20, 24), atol=1e-6)


def test_large_gaussians_cover_many_tiles(backend: RenderBackend) -> None:
    g = random_gaussians(40, 50, 70, seed=9, sigma=(5.0, 30.0))
    ref = render_dense(g, 50, 70)
    assert torch.allclose(backend.render(g, 50, 70), ref, atol=1e-5)
    assert torch.allclose(backend.render_nograd(g, 50, 70), ref, atol=1e-5)


def test_empty_gaussians_give_zeros(backend: RenderBackend) -> None:
    g = Gaussians.empty()
    for out in (backend.render(g, 7, 9), backend.render_nograd(g, 7, 9)):
        assert out.shape == (7, 9, 3) and out.dtype == torch.float32
        assert torch.equal(out, torch.zeros(7, 9, 3))
    assert backend.gaussians_touching(g, torch.ones(7, 9, dtype=torch.bool)).shape == (0,)


def test_all_gaussians_culled_still_backpropagates(backend: RenderBackend) -> None:
    g = with_grad(
        Gaussians(torch.tensor([[-50.0, -50.0]]), torch.tensor([[1.0, 0.0, 1.0]]), torch.ones(1, 3))
    )
    out = backend.render(g, 8, 8)
    assert torch.equal(out, torch.zeros(8, 8, 3))
    out.sum().backward()
    assert g.xy_px.grad is not None and torch.equal(g.xy_px.grad, torch.zeros(1, 2))


def test_degenerate_gaussians_are_dropped_without_nan(backend: RenderBackend) -> None:
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
    out = backend.render(g, height, width)
    assert torch.isfinite(out).all() and torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(backend.render_nograd(g, height, width), ref, atol=1e-5)
    out.square().sum().backward()
    for t in (g.xy_px, g.chol, g.rgb):
        assert t.grad is not None and torch.isfinite(t.grad).all()
        assert torch.equal(t.grad[30:], torch.zeros_like(t.grad[30:]))


def test_giant_gaussian_is_clipped_to_the_frame(backend: RenderBackend) -> None:
    g = Gaussians(
        torch.tensor([[30.0, 20.0], [0.0, 0.0]]),
        torch.tensor([[1e6, 0.0, 1e6], [1e15, 3.0, 1e15]]),
        torch.tensor([[0.5, 0.25, 1.0], [0.1, 0.1, 0.1]]),
    )
    ref = render_dense(g, 37, 45)
    assert torch.allclose(backend.render(g, 37, 45), ref, atol=1e-6)
    assert torch.allclose(backend.render_nograd(g, 37, 45), ref, atol=1e-6)
    _, box = pixel_boxes(g, 37, 45)
    assert box.tolist() == [[0, 44, 0, 36], [0, 44, 0, 36]]


@pytest.mark.parametrize(
    ("height", "width", "density"), [(23, 37, 0.05), (40, 40, 0.002), (30, 50, 0.5)]
)
def test_gaussians_touching_matches_dense(
    backend: RenderBackend, height: int, width: int, density: float
) -> None:
    g = random_gaussians(250, height, width, seed=17, sigma=(0.25, 3.0))
    gen = torch.Generator().manual_seed(18)
    mask = torch.rand(height, width, generator=gen) < density
    ours = backend.gaussians_touching(g, mask)
    ref = DENSE.gaussians_touching(g, mask)
    assert ours.dtype == torch.int64
    assert torch.equal(ours, ref)
    assert torch.equal(ours, torch.sort(ours).values)
    assert 0 < ours.numel() < len(g)


def test_gaussians_touching_single_pixel_and_empty_mask(backend: RenderBackend) -> None:
    # the ellipse reaches pixel (row 10, col 8) exactly at m == 9, and not (10, 7)
    g = Gaussians(
        torch.tensor([[10.0, 10.5], [30.0, 30.0]]),
        torch.tensor([[0.5, 0.0, 0.5], [1.0, 0.0, 1.0]]),
        torch.ones(2, 3),
    )
    mask = torch.zeros(40, 40, dtype=torch.bool)
    assert backend.gaussians_touching(g, mask).tolist() == []
    mask[10, 8] = True
    assert backend.gaussians_touching(g, mask).tolist() == [0]
    mask[10, 8], mask[10, 7] = False, True
    assert backend.gaussians_touching(g, mask).tolist() == []
    mask[:] = True
    assert backend.gaussians_touching(g, mask).tolist() == [0, 1]


def test_bad_frame_size_raises(backend: RenderBackend) -> None:
    with pytest.raises(ValueError):
        backend.render(Gaussians.empty(), 0, 5)


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
