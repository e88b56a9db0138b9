"""Quantisation: grid fitting, round-trip error, clamping, fake quantisation, grid bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codec.config import QuantConfig
from codec.errors import BitstreamError, CodecConfigError
from codec.gaussians import MIN_CHOL_DIAG, Gaussians
from codec.quant import (
    GRID_NBYTES,
    QGaussians,
    QuantGrid,
    dequantize,
    fake_quantize,
    make_grid,
    quantize,
)

H, W = 48, 80


def random_gaussians(n: int, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([W, H])
    l11 = 0.3 + 3 * torch.rand(n, generator=gen)
    l21 = torch.randn(n, generator=gen)
    l22 = 0.3 + 3 * torch.rand(n, generator=gen)
    rgb = torch.rand(n, 3, generator=gen)
    return Gaussians(xy, torch.stack([l11, l21, l22], dim=1), rgb)


def steps(grid: QuantGrid) -> torch.Tensor:
    """float64 [8] step per channel x y l11 l21 l22 r g b."""
    return torch.tensor(
        [grid.xy_step] * 2 + list(grid.chol_step) + list(grid.rgb_step), dtype=torch.float64
    )


def as_rows(g: Gaussians) -> torch.Tensor:
    return torch.cat([g.xy_px, g.chol, g.rgb], dim=1).double()


def test_round_trip_error_within_half_a_step() -> None:
    g = random_gaussians(500)
    grid = make_grid(g, H, W, QuantConfig(range_quantile=0.0))  # full range: nothing is clamped
    back = dequantize(quantize(g, grid), grid)
    assert back.xy_px.dtype == torch.float32
    err = (as_rows(back) - as_rows(g)).abs()
    linear = [0, 1, 3, 5, 6, 7]  # the Cholesky diagonals are geometric: checked in log units
    assert (err[:, linear] <= steps(grid)[linear] * 0.5 * (1 + 1e-5) + 1e-6).all()
    for c in (2, 4):
        log_err = (back.chol[:, c - 2].double() / g.chol[:, c - 2].double()).log().abs()
        assert (log_err <= 0.5 * torch.log(steps(grid)[c]) * (1 + 1e-4) + 1e-6).all()


def test_cholesky_diagonals_use_geometric_levels() -> None:
    g = random_gaussians(300)
    grid = make_grid(g, H, W, QuantConfig(range_quantile=0.0, chol_bits=6))
    for i in (0, 2):
        table = grid.diag_table(i)
        assert table.shape == (64,) and table[0] >= MIN_CHOL_DIAG
        ratios = table[1:] / table[:-1]
        assert torch.allclose(ratios, torch.full_like(ratios, grid.chol_step[i]), rtol=1e-12)
        assert table[-1] >= g.chol[:, i].max().item() * (1 - 1e-4)  # float32 ratio, 63 steps
        rows = torch.zeros(64, 8, dtype=torch.int32)
        rows[:, 2 + i] = torch.arange(64)
        q = QGaussians.from_rows(rows)
        assert torch.equal(dequantize(q, grid).chol[:, i], table.float())


def test_hostile_geometric_grids_are_refused() -> None:
    g = random_gaussians(50)
    grid = make_grid(g, H, W, QuantConfig())
    bad = [
        dict(chol_step=(1.0, grid.chol_step[1], grid.chol_step[2])),  # ratio must exceed 1
        dict(chol_step=(grid.chol_step[0], grid.chol_step[1], 0.5)),
        dict(chol_step=(17.0, grid.chol_step[1], grid.chol_step[2])),  # past the ratio cap
        dict(chol_lo=(0.1, grid.chol_lo[1], grid.chol_lo[2])),  # below MIN_CHOL_DIAG
    ]
    fields = grid.__dict__
    for change in bad:
        with pytest.raises(ValueError):
            QuantGrid(**{**fields, **change})
    r = float(np.float32(1.002))
    big = QuantGrid(**{**fields, "chol_bits": 12, "chol_step": (r, grid.chol_step[1], r)})
    assert big.diag_table(0)[-1] < 1e6
    with pytest.raises(ValueError):  # 4096 levels of ratio 1.5 would reach astronomically far
        QuantGrid(**{**fields, "chol_bits": 12, "chol_step": (1.5, grid.chol_step[1], 1.5)})


def test_grid_covers_frame_plus_margin_with_power_of_two_levels() -> None:
    cfg = QuantConfig(xy_bits=10, xy_margin=0.125, xy_step_px=0.0)
    grid = make_grid(random_gaussians(10), H, W, cfg)
    assert grid.xy_bits == 10
    top = grid.xy_lo + (2**10 - 1) * grid.xy_step
    assert grid.xy_lo == pytest.approx(-0.125 * W, abs=1e-4)
    assert top == pytest.approx(1.125 * W, rel=1e-5)


def test_position_step_adapts_to_frame_size_within_the_bit_cap() -> None:
    cfg = QuantConfig(xy_bits=12, xy_step_px=0.2)
    for side, bits in ((32, 8), (176, 10), (720, 12), (1920, 12)):
        grid = make_grid(random_gaussians(10), side, side, cfg)
        assert grid.xy_bits == bits
        if bits < 12:  # not capped: the step is within a factor sqrt(2) of the target
            assert 0.2 / 2**0.5 <= grid.xy_step <= 0.2 * 2**0.5


def test_robust_range_ignores_outliers_and_clamps() -> None:
    g = random_gaussians(1000)
    g.rgb[0, 0] = 50.0  # one wild colour
    grid = make_grid(g, H, W, QuantConfig(range_quantile=0.01))
    assert grid.rgb_lo[0] + (2**grid.rgb_bits - 1) * grid.rgb_step[0] < 1.5
    q = quantize(g, grid)
    assert int(q.rgb[0, 0]) == 2**grid.rgb_bits - 1  # clamped to the top level
    far = Gaussians(
        torch.tensor([[-1e4, 1e4]]),
        torch.tensor([[0.0, 0.0, -5.0]]),
        torch.tensor([[-9.0, 0.5, 9.0]]),
    )
    qf = quantize(far, grid)
    assert qf.xy.tolist() == [[0, 2**grid.xy_bits - 1]]
    assert qf.chol[0, 0] == 0 and qf.chol[0, 2] == 0
    assert qf.rgb[0, 0] == 0 and qf.rgb[0, 2] == 2**grid.rgb_bits - 1


def test_chol_diagonal_never_below_min() -> None:
    g = random_gaussians(200)
    g.chol[:, 0] = 0.01  # everything far below the floor
    g.chol[:, 2] = -3.0
    grid = make_grid(g, H, W, QuantConfig())
    assert grid.chol_lo[0] >= MIN_CHOL_DIAG and grid.chol_lo[2] >= MIN_CHOL_DIAG
    back = dequantize(quantize(g, grid), grid)
    assert (back.chol[:, 0] >= MIN_CHOL_DIAG).all() and (back.chol[:, 2] >= MIN_CHOL_DIAG).all()
    every_level = QGaussians(
        torch.zeros(2**grid.chol_bits, 2, dtype=torch.int32),
        torch.arange(2**grid.chol_bits, dtype=torch.int32)[:, None].repeat(1, 3),
        torch.zeros(2**grid.chol_bits, 3, dtype=torch.int32),
    )
    assert (dequantize(every_level, grid).chol[:, [0, 2]] >= MIN_CHOL_DIAG).all()


@pytest.mark.parametrize("n", [0, 1, 3])
def test_degenerate_sets_give_valid_grids(n: int) -> None:
    g = random_gaussians(n)
    if n:
        g = Gaussians(g.xy_px, g.chol[:1].repeat(n, 1), g.rgb[:1].repeat(n, 1))
    grid = make_grid(g, H, W, QuantConfig())
    assert grid.problem() is None
    back = dequantize(quantize(g, grid), grid)
    # colours always span at least [0, 1] (the grid serves the whole GOP): within half a step
    assert torch.allclose(back.rgb, g.rgb, atol=max(grid.rgb_step) / 2 + 1e-6)


def test_nan_quantises_to_level_zero() -> None:
    grid = make_grid(random_gaussians(20), H, W, QuantConfig())
    g = Gaussians(torch.full((1, 2), float("nan")), torch.ones(1, 3), torch.zeros(1, 3))
    assert quantize(g, grid).xy.tolist() == [[0, 0]]


def test_fake_quantize_forward_is_exact_and_gradient_passes_through() -> None:
    g = random_gaussians(300)
    grid = make_grid(g, H, W, QuantConfig(range_quantile=0.05))  # some values are clamped
    xy = g.xy_px.clone().requires_grad_(True)
    chol = g.chol.clone().requires_grad_(True)
    rgb = g.rgb.clone().requires_grad_(True)
    fq = fake_quantize(Gaussians(xy, chol, rgb), grid)
    ref = dequantize(quantize(g, grid), grid)
    assert (
        torch.equal(fq.xy_px, ref.xy_px)
        and torch.equal(fq.chol, ref.chol)
        and torch.equal(fq.rgb, ref.rgb)
    )
    weights = torch.randn(300, 8, dtype=torch.float32)
    (torch.cat([fq.xy_px, fq.chol, fq.rgb], dim=1) * weights).sum().backward()
    assert xy.grad is not None and chol.grad is not None and rgb.grad is not None
    assert torch.equal(torch.cat([xy.grad, chol.grad, rgb.grad], dim=1), weights)


def test_grid_bytes_round_trip_and_strictness() -> None:
    grid = make_grid(random_gaussians(100), H, W, QuantConfig(xy_bits=14, chol_bits=5, rgb_bits=9))
    data = grid.to_bytes()
    assert len(data) == GRID_NBYTES
    assert QuantGrid.from_bytes(data) == grid
    for bad in (data[:-1], data + b"\0", b""):
        with pytest.raises(BitstreamError):
            QuantGrid.from_bytes(bad)
    for field, value in (("xy_bits", 40), ("chol_bits", 1), ("rgb_bits", 13)):
        raw = bytearray(data)
        raw[{"xy_bits": 0, "chol_bits": 1, "rgb_bits": 2}[field]] = value
        with pytest.raises(BitstreamError, match=field):
            QuantGrid.from_bytes(bytes(raw))
    nan_step = bytearray(data)
    nan_step[8:12] = b"\x00\x00\xc0\x7f"  # xy_step = NaN
    with pytest.raises(BitstreamError):
        QuantGrid.from_bytes(bytes(nan_step))
    raw = bytearray(data)
    raw[12:16] = b"\x00\x00\x00\x00"  # chol_lo[0] = 0 < MIN_CHOL_DIAG
    with pytest.raises(BitstreamError, match="MIN_CHOL_DIAG"):
        QuantGrid.from_bytes(bytes(raw))
    for refine in (5, 5 << 4, 0xFF):  # beyond MAX_REFINE
        raw = bytearray(data)
        raw[3] = refine
        with pytest.raises(BitstreamError, match="refine"):
            QuantGrid.from_bytes(bytes(raw))
    raw = bytearray(data)
    raw[3] = 4 << 4  # chol_bits=5 less 4 leaves I-frames 1 bit
    with pytest.raises(BitstreamError, match="attr_refine"):
        QuantGrid.from_bytes(bytes(raw))


def test_qgaussians_helpers() -> None:
    grid = make_grid(random_gaussians(10), H, W, QuantConfig())
    q = quantize(random_gaussians(10), grid)
    assert len(q) == 10 and len(QGaussians.empty()) == 0
    both = QGaussians.cat([q, q.index(torch.tensor([2, 5]))])
    assert len(both) == 12 and torch.equal(both.rows()[10], q.rows()[2])
    other = QGaussians(q.xy.clone(), q.chol.clone(), q.rgb.clone())
    other.rgb[3, 1] += 1
    assert q.equal_rows(other).tolist() == [i != 3 for i in range(10)]
    with pytest.raises(ValueError):
        QGaussians(q.xy.long(), q.chol, q.rgb)


def test_quant_config_validates_new_fields() -> None:
    with pytest.raises(CodecConfigError, match="range_quantile"):
        QuantConfig(range_quantile=0.5)
    with pytest.raises(CodecConfigError, match="xy_margin"):
        QuantConfig(xy_margin=-0.1)
    with pytest.raises(CodecConfigError, match="bits_back"):
        QuantConfig(bits_back=True)


def test_refined_grid_i_frame_levels_are_the_unrefined_grid() -> None:
    g = random_gaussians(300, seed=3)
    plain = make_grid(g, H, W, QuantConfig(chol_bits=6, rgb_bits=6))
    fine = make_grid(g, H, W, QuantConfig(chol_bits=6, rgb_bits=6, pframe_attr_refine=2))
    assert (fine.chol_bits, fine.rgb_bits, fine.attr_refine, fine.xy_refine) == (8, 8, 2, 0)
    assert fine.rgb_step == tuple(s / 4 for s in plain.rgb_step)  # exact: a power of two
    q_i = quantize(g, fine)
    assert (q_i.chol % 4 == 0).all() and (q_i.rgb % 4 == 0).all()
    assert torch.equal(q_i.xy, quantize(g, plain).xy)
    # I-frame levels dequantise to the unrefined grid's values (the geometric diagonals' fine
    # ratio is rounded to float32, and 2**8 products of it drift by about 1e-5)
    a, b = dequantize(q_i, fine), dequantize(quantize(g, plain), plain)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.chol[:, 1], b.chol[:, 1])
    torch.testing.assert_close(a.chol, b.chol, rtol=1e-4, atol=0)
    # P-frame levels are never further from the value than I-frame levels
    err_i = (as_rows(dequantize(q_i, fine)) - as_rows(g)).abs()
    err_p = (as_rows(dequantize(quantize(g, fine, fine=True), fine)) - as_rows(g)).abs()
    assert (err_p[:, 5:] <= err_i[:, 5:] + 1e-6).all()
    assert err_p[:, 5:].mean() < 0.5 * err_i[:, 5:].mean()


def test_refinement_bounds_are_checked() -> None:
    with pytest.raises(CodecConfigError, match="pframe_attr_refine"):
        QuantConfig(chol_bits=10, rgb_bits=7, pframe_attr_refine=3)
    with pytest.raises(CodecConfigError, match="pframe_xy_refine"):
        QuantConfig(xy_bits=14, pframe_xy_refine=3)
