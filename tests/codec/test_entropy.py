"""Entropy coding: intra/inter round trips, canonical order, determinism, rate, robustness."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec.bitstream import write_varint
from codec.config import QuantConfig
from codec.entropy import (
    DENSITY_FREE,
    DENSITY_PER_BYTE,
    ModelMemory,
    canonical_order,
    decode_inter,
    decode_intra,
    encode_inter,
    encode_intra,
    ordering_freedom_bits,
)
from codec.errors import BitstreamError
from codec.gaussians import Gaussians
from codec.quant import QGaussians, QuantGrid, make_grid, quantize

H, W = 90, 160
CFG = QuantConfig(xy_bits=12, chol_bits=7, rgb_bits=7)
GRID = make_grid(
    Gaussians(
        torch.tensor([[0.0, 0.0], [W, H]]),
        torch.tensor([[0.3, -2.0, 0.3], [4.0, 2.0, 4.0]]),
        torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]),
    ),
    H,
    W,
    QuantConfig(xy_bits=12, chol_bits=7, rgb_bits=7, range_quantile=0.0),
)
EMPTY_IDX = torch.zeros(0, dtype=torch.int64)


def random_q(n: int, seed: int = 0, grid: QuantGrid = GRID) -> QGaussians:
    """n uniformly random quantised Gaussians in canonical order."""
    gen = torch.Generator().manual_seed(seed)

    def levels(k: int, bits: int) -> torch.Tensor:
        return torch.randint(0, 2**bits, (n, k), generator=gen, dtype=torch.int32)

    q = QGaussians(levels(2, grid.xy_bits), levels(3, grid.chol_bits), levels(3, grid.rgb_bits))
    return q.index(canonical_order(q))


def smooth_q(side: int = 32) -> QGaussians:
    """A regular grid of Gaussians with smoothly varying shape and colour (an easy image)."""
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    x = (xx.flatten().double() + 0.5) * W / side
    y = (yy.flatten().double() + 0.5) * H / side
    l11 = 1.0 + 0.5 * torch.sin(x / 30)
    l21 = 0.2 * torch.cos(y / 20)
    l22 = 1.2 + 0.3 * torch.cos(x / 25)
    rgb = torch.stack([x / W, y / H, 0.5 + 0.3 * torch.sin((x + y) / 40)], dim=1)
    g = Gaussians(
        torch.stack([x, y], 1).float(), torch.stack([l11, l21, l22], 1).float(), rgb.float()
    )
    q = quantize(g, GRID)
    return q.index(canonical_order(q))


def assert_same(a: QGaussians, b: QGaussians) -> None:
    assert len(a) == len(b)
    assert torch.equal(a.rows(), b.rows())
    assert a.xy.dtype == torch.int32 and b.xy.dtype == torch.int32


def expected_after(
    prev: QGaussians, idx: torch.Tensor, changed: QGaussians, added: QGaussians
) -> QGaussians:
    rows = prev.rows().clone()
    rows[idx] = changed.rows()
    return QGaussians.from_rows(torch.cat([rows, added.rows()]))


@pytest.mark.parametrize("n", [0, 1, 2, 17, 1000])
def test_intra_round_trip_random(n: int) -> None:
    q = random_q(n, seed=n)
    data = encode_intra(q, GRID)
    assert_same(decode_intra(data, GRID), q)


def test_intra_round_trip_extreme_values_and_duplicates() -> None:
    top = [2**GRID.xy_bits - 1] * 2 + [2**GRID.chol_bits - 1] * 3 + [2**GRID.rgb_bits - 1] * 3
    rows = torch.tensor([[0] * 8, [0] * 8, top, top, top], dtype=torch.int32)
    q = QGaussians.from_rows(rows)
    assert_same(decode_intra(encode_intra(q, GRID), GRID), q)


@pytest.mark.parametrize("bits", [(6, 2, 2), (16, 12, 12), (9, 3, 11)])
def test_intra_round_trip_other_bit_depths(bits: tuple[int, int, int]) -> None:
    grid = make_grid(
        Gaussians(torch.rand(50, 2) * 40, torch.rand(50, 3) + 0.3, torch.rand(50, 3)),
        40,
        40,
        QuantConfig(xy_bits=bits[0], chol_bits=bits[1], rgb_bits=bits[2]),
    )
    q = random_q(300, seed=3, grid=grid)
    assert_same(decode_intra(encode_intra(q, grid), grid), q)


def test_degenerate_set_is_padded_to_the_density_bound() -> None:
    q = QGaussians.from_rows(torch.full((3000, 8), 3, dtype=torch.int32))  # 3000 identical rows
    data = encode_intra(q, GRID)
    assert len(data) - 2 >= (3000 - DENSITY_FREE) / DENSITY_PER_BYTE
    assert_same(decode_intra(data, GRID), q)
    prev = random_q(5)
    data = encode_inter(prev, EMPTY_IDX, QGaussians.empty(), q, GRID)
    assert_same(decode_inter(data, prev, GRID), QGaussians.cat([prev, q]))


def test_intra_round_trip_smooth_and_smaller_than_raw() -> None:
    q = smooth_q()
    data = encode_intra(q, GRID)
    assert_same(decode_intra(data, GRID), q)
    raw_bits = len(q) * (2 * GRID.xy_bits + 3 * GRID.chol_bits + 3 * GRID.rgb_bits)
    assert len(data) * 8 < 0.5 * raw_bits  # structured content codes far below raw


def test_random_set_codes_below_raw_by_about_the_ordering_freedom() -> None:
    n = 1000
    q = random_q(n, seed=5)
    bits = len(encode_intra(q, GRID)) * 8
    raw_bits = n * (2 * GRID.xy_bits + 3 * GRID.chol_bits + 3 * GRID.rgb_bits)
    saved = raw_bits - bits
    # uniform attributes cannot be compressed; the set coding of positions saves ~log2(n!) - 1.44 n
    assert saved > 0.8 * (ordering_freedom_bits(n) - n / math.log(2))
    assert bits < raw_bits


def test_ordering_freedom_bits() -> None:
    assert ordering_freedom_bits(0) == 0.0 and ordering_freedom_bits(1) == 0.0
    assert ordering_freedom_bits(4) == pytest.approx(math.log2(24))
    with pytest.raises(ValueError):
        ordering_freedom_bits(-1)


def test_encode_is_deterministic() -> None:
    q = random_q(300, seed=9)
    assert encode_intra(q, GRID) == encode_intra(QGaussians.from_rows(q.rows().clone()), GRID)


def test_canonical_order_is_invariant_under_shuffling() -> None:
    q = random_q(400, seed=11)
    q = QGaussians.cat([q, q.index(torch.arange(0, 400, 7))])  # duplicates too
    ref = q.index(canonical_order(q))
    for seed in range(3):
        perm = torch.randperm(len(q), generator=torch.Generator().manual_seed(seed))
        shuffled = q.index(perm)
        again = shuffled.index(canonical_order(shuffled))
        assert torch.equal(again.rows(), ref.rows())
    assert encode_intra(ref, GRID) == encode_intra(again, GRID)


def test_canonical_order_breaks_morton_ties_by_attributes() -> None:
    rows = torch.tensor(
        [[5, 5, 3, 0, 0, 0, 0, 0], [5, 5, 1, 0, 0, 0, 0, 0], [0, 0, 9, 9, 9, 9, 9, 9]]
    )
    order = canonical_order(QGaussians.from_rows(rows))
    assert order.tolist() == [2, 1, 0]


def test_intra_rejects_non_morton_order_and_bad_levels() -> None:
    q = random_q(50)
    with pytest.raises(ValueError, match="Morton"):
        encode_intra(q.index(torch.arange(49, -1, -1)), GRID)
    bad = QGaussians(q.xy, q.chol, q.rgb.clone())
    bad.rgb[0, 0] = 2**GRID.rgb_bits
    with pytest.raises(ValueError, match="range"):
        encode_intra(bad, GRID)


def test_inter_empty_update_is_tiny() -> None:
    prev = random_q(500)
    data = encode_inter(prev, EMPTY_IDX, QGaussians.empty(), QGaussians.empty(), GRID)
    assert len(data) <= 2
    assert_same(decode_inter(data, prev, GRID), prev)


@pytest.mark.parametrize(
    ("n_prev", "k", "m"),
    [(1, 1, 0), (1, 0, 1), (300, 40, 0), (300, 0, 25), (300, 300, 3), (0, 0, 5)],
)
def test_inter_round_trip_random(n_prev: int, k: int, m: int) -> None:
    prev = random_q(n_prev, seed=1)
    rng = np.random.default_rng(n_prev + k + m)
    idx = torch.from_numpy(np.sort(rng.choice(n_prev, size=k, replace=False)).astype(np.int64))
    changed = random_q(k, seed=2).index(torch.from_numpy(rng.permutation(k).astype(np.int64)))
    added = random_q(m, seed=3)
    data = encode_inter(prev, idx, changed, added, GRID)
    assert_same(decode_inter(data, prev, GRID), expected_after(prev, idx, changed, added))


def test_inter_context_bitmap_pays_when_changes_follow_the_last_frame() -> None:
    prev = random_q(2000, seed=4)
    rng = np.random.default_rng(9)
    ctx = rng.random(2000) < 0.15  # rows the previous frame touched, scattered
    idx = torch.from_numpy(np.flatnonzero(ctx & (rng.random(2000) < 0.8)).astype(np.int64))
    same = prev.index(idx)
    with_ctx = encode_inter(prev, idx, same, QGaussians.empty(), GRID, ctx)
    without = encode_inter(prev, idx, same, QGaussians.empty(), GRID)
    assert len(with_ctx) < 0.7 * len(without)
    assert_same(decode_inter(with_ctx, prev, GRID, ctx), prev)
    # a decoder with another context reads other rows or refuses; it never crashes
    other = np.roll(ctx, 1)
    with contextlib.suppress(BitstreamError):
        decode_inter(with_ctx, prev, GRID, other)
    with pytest.raises(ValueError):
        encode_inter(prev, idx, same, QGaussians.empty(), GRID, ctx[:10])


def test_inter_small_motion_in_runs_is_cheap() -> None:
    prev = smooth_q()
    idx = torch.arange(200, 330)  # a contiguous block in Morton order: one run
    moved = prev.index(idx)
    moved = QGaussians((moved.xy + 2).clamp(max=2**GRID.xy_bits - 1), moved.chol, moved.rgb)
    data = encode_inter(prev, idx, moved, QGaussians.empty(), GRID)
    assert_same(
        decode_inter(data, prev, GRID), expected_after(prev, idx, moved, QGaussians.empty())
    )
    assert len(data) < 40  # one run, constant motion: a few bytes of model per stream


def test_inter_unchanged_values_cost_little() -> None:
    prev = random_q(1000)
    idx = torch.arange(0, 1000, 3)
    data = encode_inter(prev, idx, prev.index(idx), QGaussians.empty(), GRID)
    assert_same(decode_inter(data, prev, GRID), prev)
    assert len(data) < 40


def test_p_frames_reuse_models_the_gop_already_sent() -> None:
    """A run of P-frames with alike deltas: with a model memory later frames send no level
    tables, every frame still decodes exactly, and a decoder without the memory refuses them."""
    prev = smooth_q()
    rng = np.random.default_rng(5)
    enc_mem, dec_mem = ModelMemory(), ModelMemory()
    state_enc = state_dec = prev
    with_memory, without = [], []
    for t in range(4):
        idx = torch.from_numpy(np.sort(rng.choice(len(prev), 300, replace=False)))
        step = torch.from_numpy(rng.integers(-3, 4, (300, 8))).to(torch.int32)
        before = state_enc
        moved = QGaussians.from_rows((before.index(idx).rows() + step).clamp(0, 127))
        data = encode_inter(before, idx, moved, QGaussians.empty(), GRID, None, enc_mem)
        without.append(len(encode_inter(before, idx, moved, QGaussians.empty(), GRID)))
        with_memory.append(len(data))
        state_dec = decode_inter(data, state_dec, GRID, None, dec_mem)
        state_enc = expected_after(before, idx, moved, QGaussians.empty())
        assert_same(state_dec, state_enc)
        if t == 0:
            assert with_memory[0] == without[0]  # nothing to reuse yet
        else:
            assert with_memory[t] < without[t]
            with pytest.raises(BitstreamError, match="reuses a model"):
                decode_inter(data, before, GRID)


def test_inter_rejects_bad_arguments() -> None:
    prev = random_q(10)
    one = prev.index(torch.tensor([0]))
    with pytest.raises(ValueError, match="sorted"):
        encode_inter(
            prev, torch.tensor([3, 3]), QGaussians.cat([one, one]), QGaussians.empty(), GRID
        )
    with pytest.raises(ValueError, match="sorted"):
        encode_inter(prev, torch.tensor([10]), one, QGaussians.empty(), GRID)
    with pytest.raises(ValueError, match="changed rows"):
        encode_inter(prev, torch.tensor([1, 2]), one, QGaussians.empty(), GRID)
    with pytest.raises(ValueError, match="Morton"):
        encode_inter(prev, EMPTY_IDX, QGaussians.empty(), prev.index(torch.arange(9, -1, -1)), GRID)


def test_decoders_reject_inconsistent_counts() -> None:
    prev = random_q(20)
    with pytest.raises(BitstreamError, match="limit"):
        decode_intra(bytes([0x80, 0x80, 0x80, 0x80, 0x08]) + b"\x01" * 8, GRID)  # N = 2**31
    with pytest.raises(BitstreamError, match="impossible"):
        decode_intra(bytes([0x80, 0x40]), GRID)  # N = 8192 with an empty body
    with pytest.raises(BitstreamError, match="empty frame"):
        decode_intra(b"\x00\x01", GRID)
    with pytest.raises(BitstreamError, match="previous frame"):
        decode_inter(b"\x15\x00\x01", prev, GRID)  # K = 21 > 20
    with pytest.raises(BitstreamError, match="empty update"):
        decode_inter(b"\x00\x00\x07", prev, GRID)
    with pytest.raises(BitstreamError, match="varint"):
        decode_intra(b"\x80", GRID)
    with pytest.raises(BitstreamError, match="non-canonical"):
        decode_intra(b"\x80\x00", GRID)


def test_truncated_and_extended_records_raise() -> None:
    q = random_q(100, seed=4)
    data = encode_intra(q, GRID)
    raised = 0
    for cut in range(len(data)):
        try:
            out = decode_intra(data[:cut], GRID)
        except BitstreamError:
            raised += 1
            continue
        assert not torch.equal(out.rows(), q.rows())  # never silently the original
    assert raised >= 0.9 * len(data)  # the exhaustion check catches nearly every cut
    # (up to 4 appended bytes can pass the range decoder's exhaustion check; the container's
    # CRC and the exact frame lengths of the GOP framing guard against those)
    with pytest.raises(BitstreamError, match="left over"):
        decode_intra(data + b"\x5a\xa5\x5a\xa5\x01\x02\x03\x04", GRID)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_decode_intra_garbage_only_raises_bitstream_error(data: bytes) -> None:
    try:
        out = decode_intra(data, GRID)
    except BitstreamError:
        return
    rows = out.rows()
    assert (rows >= 0).all() and (rows[:, :2] < 2**GRID.xy_bits).all() and (rows[:, 2:] < 128).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 400), st.binary(min_size=1, max_size=300))
def test_decode_intra_garbage_body_only_raises_bitstream_error(n: int, body: bytes) -> None:
    try:
        out = decode_intra(write_varint(n) + body, GRID)
    except BitstreamError:
        return
    assert len(out) == n and (out.rows() >= 0).all() and (out.rows()[:, 2:] < 128).all()


PREV = random_q(60, seed=21)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 60), st.integers(0, 300), st.binary(min_size=1, max_size=300))
def test_decode_inter_garbage_body_only_raises_bitstream_error(k: int, m: int, body: bytes) -> None:
    try:
        out = decode_inter(write_varint(k) + write_varint(m) + body, PREV, GRID)
    except BitstreamError:
        return
    assert len(out) == len(PREV) + m and (out.rows() >= 0).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_decode_inter_garbage_only_raises_bitstream_error(data: bytes) -> None:
    try:
        out = decode_inter(data, PREV, GRID)
    except BitstreamError:
        return
    rows = out.rows()
    assert len(out) >= len(PREV) and (rows >= 0).all() and (rows[:, 2:] < 128).all()


VALID = [
    encode_intra(random_q(80, seed=2), GRID),
    encode_inter(PREV, torch.arange(5, 45, 2), random_q(20, seed=3), random_q(7, seed=4), GRID),
]


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 1),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1, max_size=4),
)
def test_mutated_records_only_raise_bitstream_error(
    which: int, flips: list[tuple[int, int]]
) -> None:
    raw = bytearray(VALID[which])
    for pos, bit in flips:
        raw[pos % len(raw)] ^= 1 << bit
    try:
        if which == 0:
            decode_intra(bytes(raw), GRID)
        else:
            decode_inter(bytes(raw), PREV, GRID)
    except BitstreamError:
        pass


def test_near3_neighbours_match_a_brute_force_search() -> None:
    from codec.entropy import MED_WINDOW, _near3_src

    rng = np.random.default_rng(5)
    xy = rng.integers(0, 40, size=(120, 2))
    got = _near3_src(xy)
    for i in range(len(xy)):
        cands = list(range(max(0, i - MED_WINDOW), i))
        # nearest first; among equal distances the later row first
        cands.sort(key=lambda j: (int(((xy[i] - xy[j]) ** 2).sum()), -j))
        want = (cands + [-1, -1, -1])[:3]
        assert got[i].tolist() == want


@pytest.mark.parametrize("kbits", [1, 3, 8])
def test_median_predictor_round_trips_including_wrap(kbits: int) -> None:
    from codec.entropy import _med_forward, _med_inverse, _near3_src

    rng = np.random.default_rng(kbits)
    size = 1 << kbits
    n = 300
    xy = rng.integers(0, 50, size=(n, 2))
    v = rng.integers(0, size, size=n)
    src3 = _near3_src(xy)
    r = _med_forward(v, src3, size)
    assert (r >= 0).all() and (r < size).all()
    np.testing.assert_array_equal(_med_inverse(r, src3, size), v)


def test_coherent_motion_is_cheaper_with_the_median_predictor() -> None:
    from codec.entropy import _Cand, _near3_src, _plan

    rng = np.random.default_rng(0)
    n, size_bits = 400, 10
    xy = rng.integers(0, 200, size=(n, 2))
    xy = xy[np.lexsort((xy[:, 0], xy[:, 1] // 8))]  # strips of 8 rows, like a space-filling order
    motion = np.where(xy[:, 0] < 100, 3, -4)  # two regions moving apart ...
    outlier = rng.random(n) < 0.1  # ... and some Gaussians that move on their own
    motion = np.where(outlier, rng.integers(-20, 21, size=n), motion)
    v = motion % (1 << size_bits)
    src = np.arange(n) - 1
    without = _plan(v, size_bits, [_Cand("zz"), _Cand("nb", src=src)])
    with_med = _plan(
        v, size_bits, [_Cand("zz"), _Cand("nb", src=src), _Cand("med", src3=_near3_src(xy))]
    )
    assert with_med.cand == 2 and with_med.cost < 0.8 * without.cost


REFINED = make_grid(
    Gaussians(
        torch.tensor([[0.0, 0.0], [W, H]]),
        torch.tensor([[0.3, -2.0, 0.3], [4.0, 2.0, 4.0]]),
        torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]),
    ),
    H,
    W,
    QuantConfig(
        xy_bits=12,
        chol_bits=7,
        rgb_bits=7,
        range_quantile=0.0,
        pframe_xy_refine=1,
        pframe_attr_refine=2,
    ),  # fmt: skip
)


def intra_levels(q: QGaussians, grid: QuantGrid) -> QGaussians:
    """``q``'s levels rounded down to the grid's I-frame levels (multiples of 2**refine)."""
    shifts = torch.from_numpy(grid.intra_shifts()).to(torch.int32)
    return QGaussians.from_rows((q.rows() >> shifts) << shifts)


def test_refined_grid_intra_codes_i_frame_levels_and_inter_codes_fine_deltas() -> None:
    assert REFINED.xy_bits == GRID.xy_bits + 1 and REFINED.chol_bits == GRID.chol_bits + 2
    prev = intra_levels(random_q(200, seed=4, grid=REFINED), REFINED)
    prev = prev.index(canonical_order(prev))
    data = encode_intra(prev, REFINED)
    assert_same(decode_intra(data, REFINED), prev)
    # the same Gaussians on the unrefined grid's levels cost the same bits (within the models'
    # side information): the intra coder sends level >> refine
    coarse = QGaussians.from_rows(prev.rows() >> torch.from_numpy(REFINED.intra_shifts()).int())
    assert abs(len(data) - len(encode_intra(coarse, GRID))) <= 8
    # a P-frame may move rows by a single fine level; added rows are intra coded
    idx = torch.arange(0, 200, 7)
    changed = QGaussians.from_rows(prev.index(idx).rows() + 1)
    added = intra_levels(random_q(5, seed=5, grid=REFINED), REFINED)
    added = added.index(canonical_order(added))
    inter = encode_inter(prev, idx, changed, added, REFINED)
    assert_same(decode_inter(inter, prev, REFINED), expected_after(prev, idx, changed, added))
    with pytest.raises(ValueError, match="I-frame levels"):
        encode_intra(changed.index(canonical_order(changed)), REFINED)
    with pytest.raises(ValueError, match="I-frame levels"):
        encode_inter(prev, EMPTY_IDX, QGaussians.empty(), changed.index(torch.arange(1)), REFINED)
