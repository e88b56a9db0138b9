"""What only the patch-row ``patch`` backend has: its plan (bucket ladder, chunks), its
custom backward, and bit-equality with the tile backend. The behaviour it shares with
the ``torch`` backend runs for both in test_render.py."""

from __future__ import annotations

import pytest
import torch

from codec.gaussians import Gaussians, conic
from codec.render import torch_patches
from codec.render.dense import DenseBackend, mahalanobis_sq, render_dense
from codec.render.torch_patches import PatchBackend
from codec.render.torch_tiles import TorchTileBackend, pixel_boxes
from tests.codec.render_helpers import grads_of, random_gaussians, with_grad

PATCH = PatchBackend()
TILES = TorchTileBackend()
DENSE = DenseBackend()


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
    bits, forward and in render_nograd. (The m == 9 values themselves:
    test_render.py::test_truncation_is_inclusive_at_three_sigma.)"""
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
    """The custom backward's sums do not depend on the thread count."""
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


def test_gradient_only_for_some_inputs() -> None:
    """The custom backward with only rgb requiring a gradient."""
    g = random_gaussians(30, 20, 24, seed=61)
    rgb = g.rgb.clone().requires_grad_(True)
    out = PATCH.render(Gaussians(g.xy_px, g.chol, rgb), 20, 24)
    out.sum().backward()
    expected = render_dense(g, 20, 24)
    assert rgb.grad is not None and torch.allclose(out.detach(), expected, atol=1e-6)
    # d sum / d rgb_i = total weight of Gaussian i, the same in every channel
    assert torch.allclose(rgb.grad[:, 0], rgb.grad[:, 2]) and rgb.grad.sum() > 0


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
