"""I-frame and P-frame fitting on tiny synthetic frames (CPU, dense reference renderer)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import Tensor

from codec.config import FitConfig
from codec.errors import CodecConfigError
from codec.fit import (
    FitResult,
    _GainStop,
    changed_mask,
    dense_flow,
    fit_iframe,
    fit_pframe,
    iters_to_psnr,
    psnr_of,
    unresolved_mask,
    warp_centres,
)
from codec.gaussians import MIN_CHOL_DIAG, Gaussians, radius_3sigma
from codec.init import superpixel_init
from codec.render import get_backend
from tests.codec.test_init import H, W, synthetic_frame

N = 60
DENSE = get_backend("dense")
FRAME = synthetic_frame()


class CountingBackend:
    """The dense backend, counting calls."""

    name = "counting"

    def __init__(self) -> None:
        self.renders = 0
        self.touching = 0

    def render(self, g: Gaussians, height: int, width: int) -> Tensor:
        self.renders += 1
        return DENSE.render(g, height, width)

    def render_nograd(self, g: Gaussians, height: int, width: int) -> Tensor:
        self.renders += 1
        return DENSE.render_nograd(g, height, width)

    def gaussians_touching(self, g: Gaussians, pixel_mask: Tensor) -> Tensor:
        self.touching += 1
        return DENSE.gaussians_touching(g, pixel_mask)


def cfg(**kw: object) -> FitConfig:
    return replace(FitConfig(), **kw)  # type: ignore[arg-type]


def init60() -> Gaussians:
    return superpixel_init(FRAME, N, backend=DENSE)


@pytest.fixture(scope="module")
def fitted() -> FitResult:
    return fit_iframe(FRAME, init60(), cfg(iframe_iters=60), DENSE)


def same(a: Gaussians, b: Gaussians) -> bool:
    return all(torch.equal(x, y) for x, y in ((a.xy_px, b.xy_px), (a.chol, b.chol), (a.rgb, b.rgb)))


# ----------------------------------------------------------------------------- I-frames


def test_fit_iframe_improves_and_stays_valid(fitted: FitResult) -> None:
    r = fitted
    assert r.iters == 60 and len(r.history) == 61
    assert r.psnr_db > r.history[0] + 4.0
    assert r.psnr_db == max(r.history)
    assert r.psnr_db == pytest.approx(psnr_of(DENSE.render_nograd(r.gaussians, H, W), FRAME))
    g = r.gaussians
    assert len(g) == N and not g.xy_px.requires_grad
    assert (g.chol[:, 0] >= MIN_CHOL_DIAG).all() and (g.chol[:, 2] >= MIN_CHOL_DIAG).all()
    assert (g.xy_px >= 0).all() and (g.xy_px[:, 0] <= W).all() and (g.xy_px[:, 1] <= H).all()


def test_fit_iframe_stops_at_target(fitted: FitResult) -> None:
    target = fitted.history[0] + 3.0
    r = fit_iframe(FRAME, init60(), cfg(iframe_iters=500, target_psnr_db=target), DENSE)
    assert 0 < r.iters < 60
    assert r.psnr_db >= target and r.history[-1] >= target
    assert all(h < target for h in r.history[:-1])


def test_fit_iframe_zero_iterations_returns_init() -> None:
    init = init60()
    r = fit_iframe(FRAME, init, cfg(iframe_iters=0), DENSE)
    assert r.iters == 0 and same(r.gaussians, init)
    assert r.psnr_db == pytest.approx(psnr_of(DENSE.render_nograd(init, H, W), FRAME))


def test_fit_iframe_deterministic() -> None:
    c = cfg(iframe_iters=15, densify=True, densify_every=5)
    a = fit_iframe(FRAME, init60(), c, DENSE, generator=torch.Generator().manual_seed(3))
    b = fit_iframe(FRAME, init60(), c, DENSE, generator=torch.Generator().manual_seed(3))
    assert same(a.gaussians, b.gaussians) and a.history == b.history


def test_fit_iframe_fake_quant_path() -> None:
    """Quantisation-aware fitting renders fake_quant(g) with straight-through gradients."""
    calls = 0
    step = 1.0 / 15.0

    def fake_quant(g: Gaussians) -> Gaussians:
        nonlocal calls
        calls += 1
        q = torch.round(g.rgb / step) * step
        return Gaussians(g.xy_px, g.chol, g.rgb + (q - g.rgb).detach())

    r = fit_iframe(FRAME, init60(), cfg(iframe_iters=30), DENSE, fake_quant=fake_quant)
    assert calls == r.iters + 1 == 31
    assert r.psnr_db > r.history[0] + 2.0
    shown = DENSE.render_nograd(fake_quant(r.gaussians), H, W)
    assert r.psnr_db == pytest.approx(psnr_of(shown, FRAME))


def test_fit_iframe_densify_prunes_and_reseeds() -> None:
    init = init60()
    dead = torch.arange(0, N, 4)  # 15 Gaussians with no colour
    init.rgb[dead] = 0.0
    # After one Adam step the dead rows have |rgb| <= lr * lr_rgb_mult = 0.02 < eps: pruned at
    # step 1 and re-seeded where the error is largest (the live rows are all above eps).
    assert float(init.rgb.abs().amax(dim=1).sort().values[len(dead)]) > 0.05
    c = cfg(
        iframe_iters=30, densify=True, densify_every=1, densify_until_frac=0.05, prune_rgb_eps=0.03
    )
    r = fit_iframe(FRAME, init, c, DENSE)
    assert len(r.gaussians) == N  # as many re-seeded as pruned: never more than the start
    plain = fit_iframe(FRAME, init, replace(c, densify=False), DENSE)
    assert not same(r.gaussians, plain.gaussians)
    assert r.psnr_db > plain.psnr_db  # the dead Gaussians were put where the error was


@pytest.mark.parametrize("extra", [{"ssim_weight": 0.2}, {"lr_schedule": "cosine"}])
def test_fit_iframe_loss_and_schedule_options(extra: dict[str, object]) -> None:
    r = fit_iframe(FRAME, init60(), cfg(iframe_iters=20, **extra), DENSE)
    assert r.psnr_db > r.history[0] + 2.0


def test_iters_to_psnr(fitted: FitResult) -> None:
    target = fitted.history[0] + 2.0
    n = iters_to_psnr(FRAME, init60(), FitConfig(), DENSE, target_db=target, max_iters=60)
    assert n is not None and 0 < n <= 60
    assert iters_to_psnr(FRAME, init60(), FitConfig(), DENSE, target_db=60.0, max_iters=3) is None


def test_fit_rejects_bad_input() -> None:
    with pytest.raises(CodecConfigError):
        fit_iframe(FRAME[..., :2], init60(), FitConfig(), DENSE)
    with pytest.raises(CodecConfigError):
        fit_iframe(FRAME, Gaussians.empty(), FitConfig(), DENSE)
    with pytest.raises(CodecConfigError):
        fit_pframe(init60(), FRAME[:10], FRAME, FitConfig(), DENSE)


# ----------------------------------------------------------------------------- P-frames


def reference(fitted: FitResult) -> tuple[Gaussians, Tensor, Tensor]:
    """(decoded reference, its rendering, that rendering as the previous frame)."""
    ref = fitted.gaussians
    recon = DENSE.render_nograd(ref, H, W)
    return ref, recon, recon.clamp(0, 1)


def test_changed_and_unresolved_masks() -> None:
    a = torch.zeros(20, 20, 3)
    b = a.clone()
    b[2, 2, 0] = 1.0  # isolated pixel: noise
    b[10:13, 10:13, 1] = 1.0  # 3x3 block: a change
    m = changed_mask(a, b, 0.1)
    expect = torch.zeros(20, 20, dtype=torch.bool)
    expect[9:14, 9:14] = True  # the block dilated by one pixel
    assert torch.equal(m, expect)
    u = unresolved_mask(a, b, 0.1)
    assert u[11, 11] and not u[2, 2]  # one pixel averaged over 5x5 stays below the threshold


def test_pframe_identical_frame_costs_nothing(fitted: FitResult) -> None:
    ref, recon, prev = reference(fitted)
    counting = CountingBackend()
    r = fit_pframe(ref, recon, prev, FitConfig(), counting)
    assert r.touched_idx.numel() == 0 and r.touched_idx.dtype == torch.int64
    assert r.n_added == 0 and r.iters == 0
    assert same(r.gaussians, ref)
    assert counting.renders == 0 and counting.touching == 0
    # a change below pframe_min_changed_frac is static too
    tiny = prev.clone()
    tiny[5:7, 5:7] = 1.0 - tiny[5:7, 5:7]
    r = fit_pframe(ref, recon, tiny, cfg(pframe_min_changed_frac=0.02), counting)
    assert r.touched_idx.numel() == 0 and counting.renders == 0


def test_pframe_local_change_touches_only_nearby(fitted: FitResult) -> None:
    ref, recon, prev = reference(fitted)
    x0, x1, y0, y1 = 30, 40, 4, 12
    frame = prev.clone()
    frame[y0:y1, x0:x1] = torch.tensor([0.95, 0.9, 0.1])
    r = fit_pframe(ref, recon, frame, cfg(pframe_iters=40), DENSE)

    idx = r.touched_idx
    assert idx.dtype == torch.int64 and 0 < idx.numel() < N // 2
    assert torch.equal(idx, torch.unique(idx))  # sorted, no repeats
    # every touched Gaussian's 3-sigma box reaches the (dilated) change
    c, rad = ref.xy_px[idx], radius_3sigma(ref.chol[idx])
    dx = (c[:, 0] - c[:, 0].clamp(x0 - 1, x1 + 1)).abs()
    dy = (c[:, 1] - c[:, 1].clamp(y0 - 1, y1 + 1)).abs()
    assert ((dx <= rad[:, 0] + 0.5) & (dy <= rad[:, 1] + 0.5)).all()
    # the rest are bit-identical to the reference
    rest = torch.ones(N, dtype=torch.bool)
    rest[idx] = False
    assert len(r.gaussians) == N + r.n_added
    assert same(
        r.gaussians.index(torch.nonzero(rest).flatten()), ref.index(torch.nonzero(rest).flatten())
    )
    assert not same(r.gaussians.index(idx), ref.index(idx))

    out = DENSE.render_nograd(r.gaussians, H, W)
    patch = (slice(y0, y1), slice(x0, x1))
    assert psnr_of(out[patch], frame[patch]) > psnr_of(recon[patch], frame[patch]) + 5.0
    assert r.psnr_db > psnr_of(recon, frame) + 3.0
    assert r.psnr_db == pytest.approx(psnr_of(out, frame))
    assert 0 < r.iters <= 40


def checkerboard_frame(prev: Tensor, x0: int, y0: int, size: int) -> Tensor:
    """prev with a 2-pixel black/white checkerboard that the reference cannot represent."""
    frame = prev.clone()
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    board = (((ys // 2) + (xs // 2)) % 2).to(torch.float32)
    frame[y0 : y0 + size, x0 : x0 + size] = board[..., None].expand(size, size, 3)
    return frame


def test_pframe_adds_gaussians_for_new_content(fitted: FitResult) -> None:
    ref, recon, prev = reference(fitted)
    frame = checkerboard_frame(prev, 4, 20, 12)
    c = cfg(pframe_iters=16, pframe_max_new_frac=0.2)
    r = fit_pframe(ref, recon, frame, c, DENSE, generator=torch.Generator().manual_seed(0))
    assert 1 <= r.n_added <= int(0.2 * N)
    assert len(r.gaussians) == N + r.n_added
    # every new Gaussian serves the new content: its 3-sigma box reaches the board
    new = r.gaussians.index(torch.arange(N, len(r.gaussians)))
    c_xy, rad = new.xy_px, radius_3sigma(new.chol)
    dx = (c_xy[:, 0] - c_xy[:, 0].clamp(4, 16)).abs()
    dy = (c_xy[:, 1] - c_xy[:, 1].clamp(20, 32)).abs()
    assert ((dx <= rad[:, 0]) & (dy <= rad[:, 1])).all()
    assert r.psnr_db > psnr_of(recon, frame) + 1.0
    again = fit_pframe(ref, recon, frame, c, DENSE, generator=torch.Generator().manual_seed(0))
    assert same(r.gaussians, again.gaussians) and torch.equal(r.touched_idx, again.touched_idx)

    none = fit_pframe(ref, recon, frame, replace(c, pframe_max_new_frac=0.0), DENSE)
    assert none.n_added == 0 and len(none.gaussians) == N


def test_pframe_change_no_gaussian_touches() -> None:
    """Content appears where the reference has no Gaussians: K = 0, new ones fill it in."""
    left = Gaussians(
        xy_px=torch.tensor([[4.0, 10.0], [8.0, 30.0]]),
        chol=torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]]),
        rgb=torch.tensor([[0.5, 0.5, 0.5], [0.2, 0.3, 0.4]]),
    )
    recon = DENSE.render_nograd(left, H, W)
    frame = recon.clamp(0, 1).clone()
    frame[10:30, 25:45] = torch.tensor([0.8, 0.2, 0.3])
    c = cfg(pframe_iters=30, pframe_max_new_frac=1.0)
    r = fit_pframe(left, recon, frame, c, DENSE)
    assert r.touched_idx.numel() == 0
    assert r.n_added >= 1 and len(r.gaussians) == 2 + r.n_added
    assert same(r.gaussians.index(torch.arange(2)), left)
    assert r.psnr_db > psnr_of(recon, frame) + 3.0
    assert math.isfinite(r.psnr_db)


# ----------------------------------------------------------------------------- early stopping, motion


def test_gain_stop_rule() -> None:
    stop = _GainStop(db_per_iter=0.1, window=2)
    assert not stop.update(1.0) and not stop.update(0.5)  # fewer than `window` steps: never
    assert not stop.update(0.25)  # 1.0 -> 0.25 over 2 steps: 6 dB > 0.2 dB
    assert not stop.update(0.24)  # 0.5 -> 0.24: 3.2 dB
    assert stop.update(0.239)  # 0.25 -> 0.239: 0.195 dB < 0.2 dB
    assert stop.update(0.3)  # a worse loss does not count: the best so far stalls
    stop.reset()
    assert not stop.update(0.3)
    off = _GainStop(db_per_iter=0.0, window=2)
    assert not any(off.update(1.0) for _ in range(10))


def test_fit_iframe_early_stop_saves_iterations_deterministically() -> None:
    full = fit_iframe(FRAME, init60(), cfg(iframe_iters=200), DENSE)
    c = cfg(iframe_iters=200, iframe_stop_db_per_iter=0.02, stop_window=10)
    a = fit_iframe(FRAME, init60(), c, DENSE)
    b = fit_iframe(FRAME, init60(), c, DENSE)
    assert 10 < a.iters < 200 and a.iters == b.iters and same(a.gaussians, b.gaussians)
    assert a.history == full.history[: len(a.history)]  # the same fit, cut short
    # when it stopped, the last `window` steps had gained less than 0.2 dB of loss
    assert a.psnr_db > full.history[0] + 4.0 and a.psnr_db <= full.psnr_db


def test_fit_pframe_early_stop_and_motion_are_deterministic(fitted: FitResult) -> None:
    ref, recon, prev = reference(fitted)
    frame = checkerboard_frame(prev, 4, 20, 12)
    c = cfg(pframe_iters=60, pframe_max_new_frac=0.2, pframe_stop_db_per_iter=0.05, stop_window=5)
    for motion in (False, True):
        runs = [
            fit_pframe(
                ref,
                recon,
                frame,
                replace(c, pframe_motion=motion),
                DENSE,
                generator=torch.Generator().manual_seed(0),
            )
            for _ in range(2)
        ]
        a, b = runs
        assert same(a.gaussians, b.gaussians) and a.iters == b.iters and a.n_added == b.n_added
        assert a.iters < 60
        assert a.n_added >= 1  # a stall before the seeding point seeds then instead of stopping


def shifted(img: Tensor, dx: int) -> Tensor:
    """``img`` moved right by ``dx`` pixels (edge columns repeated)."""
    out = torch.roll(img, dx, dims=1)
    out[:, :dx] = img[:, :1]
    return out


def test_dense_flow_and_warp_follow_a_shift(fitted: FitResult) -> None:
    ref, recon, _ = reference(fitted)
    frame = shifted(recon.clamp(0, 1), 3)
    flow = dense_flow(recon, frame)
    assert flow.shape == (H, W, 2) and flow.dtype == torch.float32
    assert torch.equal(flow, dense_flow(recon, frame))  # deterministic
    inner = flow[8:-8, 8:-8]
    assert float(inner[..., 0].median()) == pytest.approx(3.0, abs=0.5)
    assert float(inner[..., 1].median()) == pytest.approx(0.0, abs=0.5)
    moved = warp_centres(ref, flow)
    assert torch.equal(moved.chol, ref.chol) and torch.equal(moved.rgb, ref.rgb)
    assert (moved.xy_px[:, 0] >= 0).all() and (moved.xy_px[:, 0] <= W).all()
    # the warm start brings the reference closer to the shifted frame than it was
    warped = DENSE.render_nograd(moved, H, W)
    assert psnr_of(warped, frame) > psnr_of(recon, frame) + 2.0
    assert torch.equal(dense_flow(recon[:8, :8], frame[:8, :8]), torch.zeros(8, 8, 2))


def test_fit_pframe_motion_warm_start_helps_a_moving_frame(fitted: FitResult) -> None:
    ref, recon, prev = reference(fitted)
    frame = shifted(prev, 3)
    c = cfg(pframe_iters=10)
    plain = fit_pframe(ref, recon, frame, c, DENSE)
    warm = fit_pframe(ref, recon, frame, replace(c, pframe_motion=True), DENSE)
    assert warm.psnr_db > plain.psnr_db + 1.0
