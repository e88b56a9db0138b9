"""bench/ordering_saving.py: its sequence baseline is a real code, and the set code beats it by
about log2(N!) on synthetic Gaussians."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from codec.config import QuantConfig
from codec.entropy import _rows, canonical_order, ordering_freedom_bits
from codec.gaussians import Gaussians
from codec.init import random_init
from codec.quant import QGaussians, make_grid, quantize

H, W = 90, 160
GRID = make_grid(
    Gaussians(
        torch.tensor([[0.0, 0.0], [W, H]]),
        torch.tensor([[0.3, -2.0, 0.3], [4.0, 2.0, 4.0]]),
        torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]),
    ),
    H,
    W,
    QuantConfig(xy_bits=10, chol_bits=6, rgb_bits=6, range_quantile=0.0),
)


def _load_bench() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "ordering_saving.py"
    spec = importlib.util.spec_from_file_location("ordering_saving", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("ordering_saving", module)
    spec.loader.exec_module(module)
    return module


BENCH = _load_bench()


def _canonical_rows(n: int, seed: int, xy_levels: int | None = None) -> np.ndarray:
    """n random quantised Gaussians (int64 [n, 8]) in canonical order; positions drawn from
    ``xy_levels`` values per axis (all of the grid by default)."""
    gen = torch.Generator().manual_seed(seed)

    def levels(k: int, bits: int, top: int | None = None) -> torch.Tensor:
        return torch.randint(0, top or 2**bits, (n, k), generator=gen, dtype=torch.int32)

    q = QGaussians(
        levels(2, GRID.xy_bits, xy_levels), levels(3, GRID.chol_bits), levels(3, GRID.rgb_bits)
    )
    return _rows(q.index(canonical_order(q)))


def test_set_code_saves_about_log2_n_factorial() -> None:
    rows = _canonical_rows(400, seed=1)
    m = BENCH.measure(rows, GRID, seed=0)  # also decodes both sequence records
    log2_fact = ordering_freedom_bits(400)
    assert m["set_bytes"] < m["sequence_bytes"] <= m["naive_sequence_bytes"] + 2
    # uniform positions on a 2**20-cell grid: gaps save log2(N!) less a little model overhead
    assert 0.85 * log2_fact < m["saving_bits"] < 1.05 * log2_fact
    assert m["position_bytes_sequence"] - m["position_bytes_set"] > 0.85 * log2_fact / 8


def test_sequence_record_round_trips_with_shared_positions() -> None:
    rows = _canonical_rows(300, seed=2, xy_levels=6)  # 36 positions: many rows share one
    shuffled = rows[np.random.default_rng(3).permutation(len(rows))]
    for naive in (False, True):
        record = BENCH.sequence_record(shuffled, GRID, naive=naive)
        back = BENCH.decode_sequence_record(record, GRID, naive=naive)
        assert np.array_equal(back, shuffled)
    assert BENCH.decode_sequence_record(BENCH.sequence_record(rows[:0], GRID), GRID).shape == (0, 8)


def test_refined_grid_codes_iframe_levels() -> None:
    """With P-frame refinement the baseline codes the I-frame levels, as encode_intra does."""
    g = random_init(H, W, 300, generator=torch.Generator().manual_seed(4))
    cfg = QuantConfig(xy_bits=10, chol_bits=6, rgb_bits=6, pframe_xy_refine=2, pframe_attr_refine=1)
    grid = make_grid(g, H, W, cfg)
    q = quantize(g, grid)
    rows = _rows(q.index(canonical_order(q)))
    m = BENCH.measure(rows, grid, seed=0)  # decodes both sequence records too
    assert m["xy_bits_intra"] == grid.xy_bits - 2
    assert 0.8 * ordering_freedom_bits(300) < m["saving_bits"] < 1.05 * ordering_freedom_bits(300)
