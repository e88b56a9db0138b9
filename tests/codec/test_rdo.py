"""Rate-distortion optimised P-frame choices (codec.rdo) and the fit's rate term."""

from __future__ import annotations

import torch

from codec.config import FitConfig, QuantConfig
from codec.fit import fit_pframe
from codec.gaussians import Gaussians
from codec.quant import QGaussians, dequantize, make_grid, quantize
from codec.rdo import rd_select, update_bits
from codec.render import get_backend

H, W = 32, 40


def _scene() -> Gaussians:
    """Four well separated blobs."""
    xy = torch.tensor([[8.0, 8.0], [30.0, 8.0], [8.0, 24.0], [30.0, 24.0]])
    chol = torch.tensor([[2.5, 0.0, 2.5]] * 4)
    rgb = torch.tensor([[0.8, 0.2, 0.1], [0.1, 0.7, 0.2], [0.2, 0.3, 0.9], [0.6, 0.6, 0.6]])
    return Gaussians(xy, chol, rgb)


def _setup() -> tuple[QGaussians, QGaussians, torch.Tensor, object]:
    truth = _scene()
    grid = make_grid(truth, H, W, QuantConfig(range_quantile=0.0, rgb_bits=7, chol_bits=7))
    q_truth = quantize(truth, grid)
    target = get_backend("torch").render_nograd(dequantize(q_truth, grid), H, W)
    return q_truth, q_truth, target, grid


def _shift(q: QGaussians, row: int, col: int, by: int) -> QGaussians:
    rows = q.rows().clone()
    rows[row, col] += by
    return QGaussians.from_rows(rows)


def test_update_bits_is_zero_for_unchanged_rows_and_grows_with_the_change() -> None:
    prev = torch.zeros(3, 8, dtype=torch.int64)
    new = prev.clone()
    new[1, 5] = 1
    new[2, 5] = 9
    bits = update_bits(prev, new)
    assert bits[0] == 0 and 0 < bits[1] < bits[2]


def test_keeps_the_update_that_fixes_the_picture_and_drops_the_one_that_spoils_it() -> None:
    q_truth, _, target, grid = _setup()
    backend = get_backend("torch")
    prev = _shift(q_truth, 0, 6, -40)  # the reference has row 0's green badly off
    proposed = _shift(q_truth, 3, 5, 3)  # the fit fixed row 0 but nudged row 3's red for nothing
    changed = torch.tensor([0, 3])
    ref_img = backend.render_nograd(dequantize(prev, grid), H, W)
    choice = rd_select(
        prev, proposed, changed, QGaussians.empty(), grid, target, ref_img, backend, 50.0
    )
    assert choice.keep_updates.tolist() == [0]
    assert torch.equal(choice.rows.rows(), q_truth.rows()[[0]])


def test_reverts_a_useless_group_but_sends_the_useful_one() -> None:
    q_truth, _, target, grid = _setup()
    backend = get_backend("torch")
    prev = _shift(q_truth, 1, 6, -40)  # colour wrong in the reference
    proposed = _shift(q_truth, 1, 2, 1)  # colour fixed, plus a one-step Cholesky jitter
    ref_img = backend.render_nograd(dequantize(prev, grid), H, W)
    choice = rd_select(
        prev, proposed, torch.tensor([1]), QGaussians.empty(), grid, target, ref_img, backend, 200.0
    )
    assert choice.keep_updates.tolist() == [0]
    sent = choice.rows.rows()[0]
    assert sent[6] == q_truth.rows()[1, 6]  # the colour fix is sent
    assert sent[2] == prev.rows()[1, 2]  # the jitter is not


def test_lambda_zero_keeps_all_and_a_huge_lambda_sends_nothing() -> None:
    q_truth, _, target, grid = _setup()
    backend = get_backend("torch")
    prev = _shift(_shift(q_truth, 0, 6, -40), 2, 0, 5)
    changed = torch.tensor([0, 2])
    added = quantize(
        Gaussians(
            torch.tensor([[20.0, 16.0]]),
            torch.tensor([[2.0, 0.0, 2.0]]),
            torch.tensor([[0.3, 0.3, 0.3]]),
        ),
        grid,
    )
    ref_img = backend.render_nograd(dequantize(prev, grid), H, W)
    keep_all = rd_select(prev, q_truth, changed, added, grid, target, ref_img, backend, 0.0)
    assert keep_all.keep_updates.tolist() == [0, 1] and keep_all.keep_added.tolist() == [0]
    none = rd_select(prev, q_truth, changed, added, grid, target, ref_img, backend, 1e9)
    assert none.keep_updates.numel() == 0 and none.keep_added.numel() == 0
    # the added Gaussian is not in the target: even a small lambda drops it, the fixes stay
    some = rd_select(prev, q_truth, changed, added, grid, target, ref_img, backend, 1.0)
    assert some.keep_updates.tolist() == [0, 1] and some.keep_added.numel() == 0


def test_the_rate_term_keeps_the_p_frame_fit_near_the_reference() -> None:
    truth = _scene()
    backend = get_backend("patch")
    target = backend.render_nograd(truth, H, W)
    ref = Gaussians(truth.xy_px + 1.0, truth.chol, truth.rgb * 0.8)
    ref_img = backend.render_nograd(ref, H, W)
    cfg = FitConfig(pframe_iters=40, pframe_max_new_frac=0.0)
    free = fit_pframe(ref, ref_img, target, cfg, backend)
    tied = fit_pframe(ref, ref_img, target, cfg, backend, delta_cost=torch.full((8,), 10.0))
    moved_free = (free.gaussians.xy_px - ref.xy_px).abs().sum()
    moved_tied = (tied.gaussians.xy_px - ref.xy_px).abs().sum()
    # Adam steps about lr whatever the gradient, so the tied rows jitter around the reference
    assert moved_free > 1.0 and moved_tied < 0.3 * moved_free
