"""Fitting Gaussians to frames: I-frames from an initialisation, P-frames from the decoded reference.

Both run Adam on the Gaussian attributes with per-attribute step sizes
(``FitConfig.lr * lr_*_mult``; positions and Cholesky factors in pixels,
colours in [0, 1] units) and a learning-rate schedule (linear warm-up, then
decay on a loss plateau or a cosine over the iteration cap). The forward pass
renders ``Gaussians.clamped()`` so Sigma stays positive definite, and after each
step the parameters are projected back (Cholesky diagonal >= MIN_CHOL_DIAG,
centres inside the frame). With ``fake_quant`` the forward renders
``fake_quant(g)`` (straight-through quantisation-aware fitting) and every
reported PSNR is that of the fake-quantised rendering.

P-frames follow seed 002 section 3.2C in closed loop: only Gaussians whose 3-sigma
ellipse covers a changed pixel are optimised (the rest are bit-identical to the
reference), and where the residual stays large new Gaussians are seeded from it.

Both fits stop at their iteration cap or earlier, once the gain per iteration of
their objective falls below ``FitConfig.iframe_stop_db_per_iter`` /
``pframe_stop_db_per_iter`` (:class:`_GainStop`; measured on the loss, so it is as
deterministic as the fit). A P-frame whose touched rows stall before it has seeded
new Gaussians seeds them then instead of stopping. With ``FitConfig.pframe_motion``
the touched rows start where dense optical flow (OpenCV DIS, :func:`dense_flow`)
from the reference's rendering to the new frame moves their centres, when that
start renders closer to the frame than the reference does (encoder only: the
bitstream carries the fitted positions, so the decoder needs no flow).

PSNR is measured as in MEASURING.md: the rendering clamped to [0, 1] and rounded
to 8 bits, against the frame. Everything is deterministic for a given generator.

Each step evaluates an :class:`_Objective`. On the fused C++ backend with the plain squared
error (every preset's fits, QAT's straight-through quantisation included) it needs no
autograd: the backend's ``render_vjp`` gives the picture and a pullback that returns the rows' gradients
(conic chain rule and scatter in C++), one C++ pass gives the loss, the 8-bit PSNR, the
P-frame's unresolved-pixel count and d loss / d picture, and the rate term's gradient is
written out. At 176x144 the autograd graph's bookkeeping had cost more than the kernel
(BENCHMARKS.md, "Encode and decode speed on the CPU"). Other backends, SSIM losses and GPU
fits keep autograd; tests/codec/test_fit_objective.py holds the two ways to each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from codec.config import FitConfig
from codec.densify import plan_densify
from codec.errors import CodecConfigError
from codec.gaussians import MIN_CHOL_DIAG, Gaussians
from codec.render.base import GradBackend, RenderBackend

FakeQuant = Callable[[Gaussians], Gaussians]

PLATEAU_REL_TOL = 1e-3  # a loss counts as improved when it is this much below the best so far
NEW_SIGMA_MIN_PX, NEW_SIGMA_MAX_PX = 0.7, 6.0  # size range of Gaussians seeded from a residual
SSIM_WINDOW, SSIM_SIGMA = 7, 1.5
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2


@dataclass
class FitResult:
    """An I-frame fit: the Gaussians, optimiser steps taken, PSNR (dB) reached."""

    gaussians: Gaussians  # detached, Cholesky diagonal >= MIN_CHOL_DIAG
    iters: int
    psnr_db: float
    history: list[float] = field(default_factory=list)  # PSNR before each step, then after the last


@dataclass
class PFrameResult:
    """A P-frame fit: reference rows (updated where touched) followed by ``n_added`` new rows."""

    gaussians: Gaussians
    touched_idx: Tensor  # int64 [K] sorted: rows of the reference that were optimised
    n_added: int
    iters: int
    psnr_db: float


# ----------------------------------------------------------------------------- helpers


def _check_frame(frame: Tensor) -> tuple[Tensor, int, int]:
    if not isinstance(frame, Tensor) or frame.ndim != 3 or frame.shape[2] != 3:
        shape = tuple(frame.shape) if isinstance(frame, Tensor) else type(frame).__name__
        raise CodecConfigError(f"frame must be a float tensor [H, W, 3]; got {shape}")
    return frame.to(torch.float32), int(frame.shape[0]), int(frame.shape[1])


def psnr_of(image: Tensor, target: Tensor) -> float:
    """PSNR (dB) of a rendering (any range) against a [0, 1] frame, on 8-bit values."""
    with torch.no_grad():
        a = (image.clamp(0.0, 1.0) * 255.0).round()
        mse = float((a - target * 255.0).square().mean())
    return 10.0 * math.log10(255.0**2 / mse) if mse > 0 else float("inf")


def _gauss_window(device: torch.device) -> Tensor:
    r = torch.arange(SSIM_WINDOW, dtype=torch.float32, device=device) - (SSIM_WINDOW - 1) / 2
    k = torch.exp(-0.5 * (r / SSIM_SIGMA) ** 2)
    return k / k.sum()


def _ssim(img: Tensor, target: Tensor) -> Tensor:
    """Mean SSIM of [H, W, 3] images (Gaussian window, separable, 'valid' borders)."""
    k = _gauss_window(img.device)
    kx = k.view(1, 1, 1, -1).expand(3, 1, 1, -1)
    ky = k.view(1, 1, -1, 1).expand(3, 1, -1, 1)

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(x, kx, groups=3), ky, groups=3)

    x = img.permute(2, 0, 1)[None]
    y = target.permute(2, 0, 1)[None]
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    s = ((2 * mx * my + SSIM_C1) * (2 * cxy + SSIM_C2)) / (
        (mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2)
    )
    return s.mean()


def _loss(img: Tensor, target: Tensor, ssim_weight: float) -> Tensor:
    mse = (img - target).square().mean()
    if ssim_weight <= 0.0 or min(img.shape[0], img.shape[1]) < SSIM_WINDOW:
        return mse
    return (1.0 - ssim_weight) * mse + ssim_weight * (1.0 - _ssim(img, target))


def _quant_channels(g: Gaussians, n: int) -> Tensor:
    """[n, 8] the first ``n`` rows in the quantiser's channels: x, y, log l11, l21, log l22, r, g, b
    (see codec.quant), the units the P-frame rate term counts changes in."""
    chol = g.chol[:n]
    logd = chol[:, [0, 2]].clamp(min=MIN_CHOL_DIAG).log()
    return torch.cat([g.xy_px[:n], logd[:, :1], chol[:, 1:2], logd[:, 1:], g.rgb[:n]], dim=1)


def changed_mask(a: Tensor, b: Tensor, threshold: float) -> Tensor:
    """Pixels (bool [H, W]) where max-over-RGB |a - b| > threshold, with isolated pixels
    (fewer than two changed 8-neighbours) removed and the rest dilated by one pixel."""
    with torch.no_grad():
        d = ((a - b).abs().amax(dim=2) > threshold).to(torch.float32)[None, None]
        ones = torch.ones(1, 1, 3, 3, device=d.device)
        neighbours = F.conv2d(d, ones, padding=1) - d
        kept = d * (neighbours >= 2).to(torch.float32)
        return (F.max_pool2d(kept, 3, stride=1, padding=1)[0, 0] > 0).to(torch.bool)


def unresolved_mask(target: Tensor, image: Tensor, threshold: float) -> Tensor:
    """Pixels (bool [H, W]) whose max-over-RGB error, averaged over a 5x5 window, exceeds
    ``threshold``: structured error (content the Gaussians miss), not fitting noise."""
    with torch.no_grad():
        d = (target - image).abs().amax(dim=2)[None, None]
        local = F.avg_pool2d(d, 5, stride=1, padding=2, count_include_pad=False)[0, 0]
        return local > threshold


class _Schedule:
    """Learning-rate factor per iteration: warm-up, then plateau decay or cosine."""

    def __init__(self, cfg: FitConfig, horizon: int) -> None:
        self.cfg = cfg
        self.horizon = max(1, horizon)
        self.scale = 1.0
        self.best = math.inf
        self.since = 0

    def factor(self, it: int, loss: float) -> float:
        c = self.cfg
        warm = min(1.0, 0.1 + 0.9 * it / c.lr_warmup_iters) if c.lr_warmup_iters > 0 else 1.0
        if c.lr_schedule == "cosine":
            t = min(1.0, it / self.horizon)
            return warm * (
                c.lr_min_frac + (1.0 - c.lr_min_frac) * 0.5 * (1.0 + math.cos(math.pi * t))
            )
        if loss < self.best * (1.0 - PLATEAU_REL_TOL):
            self.best, self.since = loss, 0
        else:
            self.since += 1
            if self.since >= c.lr_patience and it >= c.lr_warmup_iters:
                self.scale = max(c.lr_min_frac, self.scale * c.lr_decay)
                self.since = 0
        return warm * self.scale


class _GainStop:
    """Early stopping on the gain per iteration: ``update(loss)`` is True once the best loss so far
    fell by less than ``window * db_per_iter`` dB (``10 log10(old / new)``) over the last ``window``
    iterations. Off (never True) when ``db_per_iter`` is 0."""

    def __init__(self, db_per_iter: float, window: int) -> None:
        self.min_gain_db = db_per_iter * window
        self.window = window
        self.best: list[float] = []  # best loss after each update

    def reset(self) -> None:
        """Forget the history (after the set of Gaussians changed)."""
        self.best.clear()

    def update(self, loss: float) -> bool:
        best = min(loss, self.best[-1]) if self.best else loss
        self.best.append(best)
        if self.min_gain_db <= 0 or len(self.best) <= self.window:
            return False
        old = self.best[-1 - self.window]
        if best <= 0.0 or old <= best:
            return old <= best  # no gain at all (or a perfect fit)
        return 10.0 * math.log10(old / best) < self.min_gain_db


class _Adam:
    """Adam with torch.optim.Adam's defaults and arithmetic (single-tensor path), on a few tensors.

    Written out because constructing ``torch.optim.Adam`` imports ``torch._dynamo``: 3 to 17 s
    per process on the 2-core machine, more than all the fitting of a short encode, and paid
    again by every parallel GOP worker. The per-row moments can follow a restructure.
    """

    def __init__(self, params: list[Tensor], betas: tuple[float, float] = (0.9, 0.999)) -> None:
        self.params = params
        self.b1, self.b2 = betas
        self.eps = 1e-8
        self.steps = 0
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]

    def step(self, grads: list[Tensor | None], lrs: list[float]) -> None:
        """One update of every parameter whose gradient in ``grads`` is not None, with learning
        rates ``lrs``."""
        self.steps += 1
        bc1 = 1.0 - self.b1**self.steps
        bc2_sqrt = math.sqrt(1.0 - self.b2**self.steps)
        with torch.no_grad():
            for p, g, m, v, lr in zip(
                self.params, grads, self.exp_avg, self.exp_avg_sq, lrs, strict=True
            ):
                if g is None:
                    continue
                m.lerp_(g, 1.0 - self.b1)
                v.mul_(self.b2).addcmul_(g, g, value=1.0 - self.b2)
                denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
                p.addcdiv_(m, denom, value=-lr / bc1)

    def carry_over(self, old: _Adam, keep: Tensor) -> None:
        """Take ``old``'s step count and its moments of rows ``keep`` (new rows start at zero)."""
        self.steps = old.steps
        for mine, theirs in ((self.exp_avg, old.exp_avg), (self.exp_avg_sq, old.exp_avg_sq)):
            for i, t in enumerate(theirs):
                mine[i][: len(keep)] = t[keep]


class _RowOptimizer:
    """Adam over a block of Gaussian rows with per-attribute learning rates."""

    def __init__(self, rows: Gaussians, cfg: FitConfig) -> None:
        self.base_lrs = [
            cfg.lr * cfg.lr_xy_mult,
            cfg.lr * cfg.lr_chol_mult,
            cfg.lr * cfg.lr_rgb_mult,
        ]
        self._make(rows)

    def _make(self, rows: Gaussians) -> None:
        self.xy = rows.xy_px.detach().clone().to(torch.float32).requires_grad_(True)
        self.chol = rows.chol.detach().clone().to(torch.float32).requires_grad_(True)
        self.rgb = rows.rgb.detach().clone().to(torch.float32).requires_grad_(True)
        self.opt = _Adam(self.params)

    @property
    def params(self) -> list[Tensor]:
        return [self.xy, self.chol, self.rgb]

    def __len__(self) -> int:
        return int(self.xy.shape[0])

    def rows(self) -> Gaussians:
        return Gaussians(self.xy, self.chol, self.rgb)

    def snapshot(self) -> Gaussians:
        return Gaussians(
            self.xy.detach().clone(), self.chol.detach().clone(), self.rgb.detach().clone()
        )

    def step(self, grads: list[Tensor | None], lr_factor: float, height: int, width: int) -> None:
        """One Adam step along ``grads`` (xy, chol, rgb), then back onto the valid set."""
        self.opt.step(grads, [lr * lr_factor for lr in self.base_lrs])
        with torch.no_grad():  # project back onto the valid set
            self.chol[:, 0].clamp_(min=MIN_CHOL_DIAG)
            self.chol[:, 2].clamp_(min=MIN_CHOL_DIAG)
            self.xy[:, 0].clamp_(0.0, float(width))
            self.xy[:, 1].clamp_(0.0, float(height))

    def restructure(self, keep: Tensor, new: Gaussians) -> None:
        """Keep rows ``keep`` (int64, in order) and append ``new``; Adam moments follow the kept rows."""
        old = self.opt
        kept = self.rows().detach().index(keep)
        self._make(Gaussians.cat([kept, new.to(kept.device)]))
        self.opt.carry_over(old, keep)


@dataclass
class _RateTerm:
    """The P-frame loss's rate term: ``sum(|channels(rows[:n]) - start| * cost)`` (see
    :func:`_quant_channels`), the cost of moving the first ``n`` rows away from the reference."""

    start: Tensor  # [n, 8] the rows' channels before the fit
    cost: Tensor  # [8] or [n, 8] loss per unit of change

    def moved(self, rows: Gaussians) -> Tensor:
        """[n, 8] how far the first n rows moved from the start, in channel units."""
        return _quant_channels(rows, int(self.start.shape[0])) - self.start

    def value(self, rows: Gaussians, moved: Tensor | None = None) -> Tensor:
        m = self.moved(rows) if moved is None else moved
        return (m.abs() * self.cost).sum()

    def add_grads(
        self, rows: Gaussians, moved: Tensor, g_xy: Tensor, g_chol: Tensor, g_rgb: Tensor
    ) -> None:
        """Add d value / d rows to the gradients (in place), as autograd through :meth:`value`;
        ``moved`` is ``channels(rows[:n]) - start`` [n, 8]."""
        n = int(self.start.shape[0])
        if n == 0:
            return
        with torch.no_grad():
            s = moved.sign() * self.cost  # [n, 8]
            diag = rows.chol[:n][:, [0, 2]]
            dlog = (diag >= MIN_CHOL_DIAG).to(diag.dtype) / diag.clamp(min=MIN_CHOL_DIAG)
            g_xy[:n] += s[:, 0:2]
            g_chol[:n, 0] += s[:, 2] * dlog[:, 0]
            g_chol[:n, 1] += s[:, 3]
            g_chol[:n, 2] += s[:, 4] * dlog[:, 1]
            g_rgb[:n] += s[:, 5:8]


@dataclass
class _Eval:
    """One evaluation of a fit's objective at the optimiser's current rows."""

    img: Tensor  # [H, W, 3] the whole picture (static part included), detached
    loss: float
    psnr_db: float
    n_unresolved: int  # pixels of the objective's `changed` mask still unresolved (0 without one)
    grads: Callable[[], list[Tensor | None]]  # d loss / d (xy, chol, rgb) of the rows


class _Objective:
    """The fit's loss (MSE, or MSE and SSIM, plus an optional rate term) of the picture
    ``static + render(fake_quant(rows.clamped()))`` against ``target``, with the loop's
    statistics: PSNR and the pixels of ``changed`` still unresolved at ``threshold``.

    With a :class:`GradBackend` on the CPU and plain MSE (every preset's fits) the gradient
    comes from the backend's pullback and closed-form chain rules, one C++ pass computes the
    statistics, and no autograd graph is built; otherwise autograd does it all. The two agree
    up to float rounding (tests/codec/test_fit_objective.py).
    """

    def __init__(
        self,
        target: Tensor,
        backend: RenderBackend,
        cfg: FitConfig,
        *,
        static: Tensor | None = None,
        fake_quant: FakeQuant | None = None,
        changed: Tensor | None = None,
        threshold: float = 0.0,
        rate: _RateTerm | None = None,
    ) -> None:
        self.target, self.backend, self.cfg = target, backend, cfg
        self.h, self.w = int(target.shape[0]), int(target.shape[1])
        self.static, self.fake_quant = static, fake_quant
        self.changed, self.threshold, self.rate = changed, threshold, rate
        self.fused = (
            isinstance(backend, GradBackend)
            and cfg.ssim_weight <= 0.0
            and target.device.type == "cpu"
        )

    def _shown(self, rows: Gaussians) -> Gaussians:
        g = rows.clamped()
        return self.fake_quant(g) if self.fake_quant is not None else g

    def __call__(self, rows: Gaussians) -> _Eval:
        """Evaluate at ``rows`` (the optimiser's leaves)."""
        return self._fused(rows) if self.fused else self._autograd(rows)

    def _autograd(self, rows: Gaussians) -> _Eval:
        if len(rows) == 0 and self.static is not None:
            img = self.static
        else:
            img = self.backend.render(self._shown(rows), self.h, self.w)
            if self.static is not None:
                img = self.static + img
        shown = img.detach()
        n_unresolved = 0
        if self.changed is not None:
            still = unresolved_mask(self.target, shown, self.threshold) & self.changed
            n_unresolved = int(still.sum())
        loss = _loss(img, self.target, self.cfg.ssim_weight)
        if self.rate is not None:
            loss = loss + self.rate.value(rows)
        params = [rows.xy_px, rows.chol, rows.rgb]

        def grads() -> list[Tensor | None]:
            if not loss.requires_grad:
                return [None, None, None]
            got = torch.autograd.grad(loss, params, allow_unused=True)
            return list(got)

        return _Eval(shown, float(loss.detach()), psnr_of(shown, self.target), n_unresolved, grads)

    def _fused(self, rows: Gaussians) -> _Eval:
        backend = self.backend
        assert isinstance(backend, GradBackend)
        rows = rows.detach()
        with torch.no_grad():
            part, vjp = backend.render_vjp(self._shown(rows), self.h, self.w)
            img = part if self.static is None else self.static + part
            sse, sse8, n_unresolved, grad_img = backend.residual_stats(
                img, self.target, self.changed, self.threshold
            )
            n_values = 3 * self.h * self.w
            loss = sse / n_values
            moved = None
            if self.rate is not None:
                moved = self.rate.moved(rows)
                loss += float(self.rate.value(rows, moved))
        psnr = 10.0 * math.log10(255.0**2 * n_values / sse8) if sse8 > 0 else float("inf")

        def grads() -> list[Tensor | None]:
            g_xy, g_chol, g_rgb = vjp(grad_img)
            with torch.no_grad():  # clamped(): the gradient passes where l >= MIN_CHOL_DIAG
                for col in (0, 2):
                    g_chol[:, col] *= (rows.chol[:, col] >= MIN_CHOL_DIAG).to(g_chol.dtype)
            if self.rate is not None and moved is not None:
                self.rate.add_grads(rows, moved, g_xy, g_chol, g_rgb)
            return [g_xy, g_chol, g_rgb]

        return _Eval(img, loss, psnr, n_unresolved, grads)


def _default_generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def seed_from_residual(
    residual: Tensor,
    region: Tensor,
    m: int,
    generator: torch.Generator,
    sigma_px: float | None = None,
) -> Gaussians:
    """Up to ``m`` isotropic Gaussians (fewer if ``region`` has fewer pixels) placed on the peaks of
    the residual (target - rendering, [H, W, 3]) inside ``region`` (bool [H, W]).

    Centres are drawn without replacement among local maxima of the smoothed error, with
    probability proportional to it. Without ``sigma_px`` the seeds tile the region (sigma is
    half the spacing ``m`` seeds would have over it, colours scaled so overlapping seeds sum to
    the locally averaged residual); with it they are isolated blobs of that residual.
    """
    h, w, _ = residual.shape
    with torch.no_grad():
        res = residual.permute(2, 0, 1)[None]
        smooth = F.avg_pool2d(res, 3, stride=1, padding=1, count_include_pad=False)[0].permute(
            1, 2, 0
        )
        err = smooth.square().sum(dim=2) * region
        peak = err == F.max_pool2d(err[None, None], 5, stride=1, padding=2)[0, 0]
        cand = torch.nonzero((peak & (err > 0)).flatten()).flatten()
        if cand.numel() < m:  # not enough peaks: any region pixel with error will do
            cand = torch.nonzero((err > 0).flatten()).flatten()
        m = min(m, int(cand.numel()))
        if m <= 0:
            return Gaussians.empty(residual.device)
        weights = err.flatten()[cand].to(torch.float64).cpu()  # the generator is a CPU one
        draw = torch.multinomial(weights, m, replacement=False, generator=generator)
        pick = cand[draw.to(cand.device)]
        pick = pick.sort().values
        ys, xs = pick // w, pick % w
        if sigma_px is None:  # tile the region: seeds on a lattice of spacing s = 2 sigma ...
            sigma_px = 0.5 * math.sqrt(float(region.sum()) / m)
            amp = 2.0 / math.pi  # ... sum to amp * 2 pi sigma^2 / s^2 = amp * pi / 2
        else:  # isolated seeds: the peak value is the residual
            amp = 1.0
        sigma = min(NEW_SIGMA_MAX_PX, max(NEW_SIGMA_MIN_PX, sigma_px))
        xy = torch.stack([xs, ys], dim=1).to(torch.float32) + 0.5
        chol = torch.tensor([sigma, 0.0, sigma], device=residual.device).expand(m, 3).clone()
        rgb = smooth[ys, xs] * amp
        return Gaussians(xy, chol, rgb.to(torch.float32))


# ----------------------------------------------------------------------------- I-frames


def _densify(
    opt: _RowOptimizer,
    img: Tensor,
    target: Tensor,
    n_max: int,
    cfg: FitConfig,
    gen: torch.Generator,
    backend: RenderBackend,
) -> None:
    """One densification round (codec.densify.plan_densify): prune what does not pay, split large
    Gaussians under high error, re-seed the rest (up to ``n_max`` in all) where the error is largest."""
    residual = (target - img).detach()
    plan, n_seed = plan_densify(
        opt.rows().detach(),
        residual,
        n_max,
        backend,
        prune_rgb_eps=cfg.prune_rgb_eps,
        prune_cost_levels2=cfg.pframe_rd_lambda * cfg.densify_prune_bits,
        split_share=cfg.densify_split_share,
    )
    if plan.n_pruned + plan.n_split + n_seed == 0:
        return
    region = torch.ones(target.shape[:2], dtype=torch.bool, device=target.device)
    seeds = seed_from_residual(residual, region, n_seed, gen, sigma_px=1.0) if n_seed > 0 else None
    opt.restructure(plan.keep, Gaussians.cat([plan.new, seeds]) if seeds else plan.new)
    with torch.no_grad():
        opt.xy[plan.split_pos] = plan.split_first.xy_px
        opt.chol[plan.split_pos] = plan.split_first.chol
        opt.rgb[plan.split_pos] = plan.split_first.rgb


def fit_iframe(
    frame: Tensor,
    init: Gaussians,
    cfg: FitConfig,
    backend: RenderBackend,
    *,
    fake_quant: FakeQuant | None = None,
    generator: torch.Generator | None = None,
    n_max: int | None = None,
) -> FitResult:
    """Fit Gaussians to ``frame`` (float32 [H, W, 3] in [0, 1]) starting from ``init``.

    Stops after ``cfg.iframe_iters`` steps, as soon as the rendering reaches
    ``cfg.target_psnr_db``, or once the loss gains less than ``cfg.iframe_stop_db_per_iter`` dB
    per step (over ``cfg.stop_window`` steps; with densification, only after its last round);
    returns the best Gaussians seen. With ``cfg.densify``, every
    ``densify_every`` steps (during the first ``densify_until_frac`` of the cap) near-zero
    Gaussians are pruned, large ones under high error split and the rest re-seeded where the
    error is largest (:func:`_densify`); the count never exceeds ``n_max`` (default
    ``len(init)``). ``generator`` drives where re-seeded Gaussians go.
    """
    target, h, w = _check_frame(frame)
    if len(init) == 0:
        raise CodecConfigError("fit_iframe needs at least one Gaussian")
    gen = _default_generator(generator)
    n_max = max(len(init), n_max or 0)
    opt = _RowOptimizer(init.to(target.device), cfg)
    sched = _Schedule(cfg, cfg.iframe_iters)
    stop = _GainStop(cfg.iframe_stop_db_per_iter, cfg.stop_window)
    history: list[float] = []
    best_psnr, best = -math.inf, opt.snapshot()
    densify_stop = int(cfg.densify_until_frac * cfg.iframe_iters)
    objective = _Objective(target, backend, cfg, fake_quant=fake_quant)
    it = 0
    while True:
        ev = objective(opt.rows())
        psnr = ev.psnr_db
        history.append(psnr)
        if psnr > best_psnr:
            best_psnr, best = psnr, opt.snapshot()
        if psnr >= cfg.target_psnr_db or it >= cfg.iframe_iters:
            break
        if stop.update(ev.loss) and (not cfg.densify or it > densify_stop):
            break
        opt.step(ev.grads(), sched.factor(it, ev.loss), h, w)
        it += 1
        if cfg.densify and it % cfg.densify_every == 0 and it <= densify_stop:
            _densify(opt, ev.img, target, n_max, cfg, gen, backend)
    return FitResult(gaussians=best, iters=it, psnr_db=best_psnr, history=history)


def iters_to_psnr(
    frame: Tensor,
    init: Gaussians,
    cfg: FitConfig,
    backend: RenderBackend,
    target_db: float = 30.0,
    max_iters: int = 5000,
    *,
    generator: torch.Generator | None = None,
) -> int | None:
    """Optimiser steps :func:`fit_iframe` needs from ``init`` to reach ``target_db`` (None if
    not within ``max_iters``); the benchmark figure for content-aware against random init."""
    run_cfg = replace(cfg, target_psnr_db=target_db, iframe_iters=max_iters)
    res = fit_iframe(frame, init, run_cfg, backend, generator=generator)
    return res.iters if res.psnr_db >= target_db else None


# ----------------------------------------------------------------------------- P-frames


def _gray_u8(image: Tensor) -> np.ndarray:
    """[H, W, 3] in [0, 1] -> uint8 [H, W] luma (BT.601), rounded as the codec rounds pixels."""
    rgb = (image.detach().clamp(0.0, 1.0) * 255.0).round().to(torch.float32).cpu()
    luma = rgb @ torch.tensor([0.299, 0.587, 0.114])
    return luma.round().clamp(0.0, 255.0).to(torch.uint8).numpy()


def dense_flow(ref: Tensor, frame: Tensor) -> Tensor:
    """Dense optical flow (float32 [H, W, 2], x then y, pixels) from ``ref`` to ``frame`` (both
    [H, W, 3] in [0, 1]): content at pixel p of ``ref`` is at p + flow[p] in ``frame``.

    OpenCV's DIS flow (medium preset) on 8-bit luma; deterministic (no random state). Frames
    too small for its pyramid get zero flow."""
    import cv2  # local import: cv2 is heavy and only the motion warm start needs it here

    h, w = int(ref.shape[0]), int(ref.shape[1])
    if min(h, w) < 16:
        return torch.zeros(h, w, 2, dtype=torch.float32, device=ref.device)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)  # type: ignore[attr-defined]
    flow = dis.calc(_gray_u8(ref), _gray_u8(frame), None)
    return torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32)).to(ref.device)


def warp_centres(g: Gaussians, flow: Tensor) -> Gaussians:
    """``g`` with each centre moved by the flow (float32 [H, W, 2]) at the pixel under it, kept
    inside the frame; shapes and colours unchanged."""
    h, w = int(flow.shape[0]), int(flow.shape[1])
    with torch.no_grad():
        col = g.xy_px[:, 0].floor().clamp(0, w - 1).to(torch.int64)
        row = g.xy_px[:, 1].floor().clamp(0, h - 1).to(torch.int64)
        xy = g.xy_px + flow[row, col].to(g.xy_px)
        xy = torch.stack([xy[:, 0].clamp(0.0, float(w)), xy[:, 1].clamp(0.0, float(h))], dim=1)
    return Gaussians(xy, g.chol, g.rgb)


class _Assembler:
    """Full Gaussian set = frozen reference with rows ``idx`` replaced by the optimised rows, then new rows.

    Rendering is a plain sum over Gaussians, so the picture of the full set is the picture of the
    frozen rows (rendered once, ``static``) plus that of the optimised rows: :meth:`render` draws
    only those, so a P-frame iteration costs what its K touched rows cost, not all N. (The sum's
    order differs from one full render's, by float rounding only; what is transmitted is
    quantised and rendered by the decoder's renderer, so the closed loop does not depend on it.)
    """

    def __init__(
        self,
        ref: Gaussians,
        idx: Tensor,
        backend: RenderBackend,
        height: int,
        width: int,
        fake_quant: FakeQuant | None = None,
    ) -> None:
        self.ref = ref.detach()
        self.idx = idx
        self.backend, self.h, self.w, self.fake_quant = backend, height, width, fake_quant
        frozen = torch.ones(len(ref), dtype=torch.bool, device=ref.device)
        frozen[idx] = False
        self.static = backend.render_nograd(self._shown(self.ref.index(frozen)), height, width)

    def _shown(self, g: Gaussians) -> Gaussians:
        g = g.clamped()
        return self.fake_quant(g) if self.fake_quant is not None else g

    def render(self, rows: Gaussians, *, grad: bool = True) -> Tensor:
        """[H, W, 3] picture of the full set whose optimised rows are ``rows``."""
        if len(rows) == 0:
            return self.static
        draw = self.backend.render if grad else self.backend.render_nograd
        return self.static + draw(self._shown(rows), self.h, self.w)

    def __call__(self, rows: Gaussians) -> Gaussians:
        k = int(self.idx.numel())
        xy = self.ref.xy_px.index_copy(0, self.idx, rows.xy_px[:k])
        chol = self.ref.chol.index_copy(0, self.idx, rows.chol[:k])
        rgb = self.ref.rgb.index_copy(0, self.idx, rows.rgb[:k])
        full = Gaussians(xy, chol, rgb)
        if len(rows) > k:
            full = Gaussians.cat([full, rows.index(torch.arange(k, len(rows), device=rows.device))])
        return full


def _motion_start(
    rows: Gaussians, assemble: _Assembler, recon: Tensor, target: Tensor
) -> Gaussians:
    """The touched ``rows`` moved by the optical flow from ``recon`` (the reference's rendering)
    to ``target``, if that renders closer to ``target`` than the unmoved rows; else ``rows``."""
    moved = warp_centres(rows, dense_flow(recon, target))
    with torch.no_grad():
        img = assemble.render(moved, grad=False).clamp(0.0, 1.0)
        err_moved = float((img - target).square().sum())
        err_ref = float((recon - target).square().sum())
    return moved if err_moved < err_ref else rows


def fit_pframe(
    ref: Gaussians,
    ref_recon: Tensor,
    frame: Tensor,
    cfg: FitConfig,
    backend: RenderBackend,
    *,
    fake_quant: FakeQuant | None = None,
    generator: torch.Generator | None = None,
    prev_frame: Tensor | None = None,
    delta_cost: Tensor | None = None,
) -> PFrameResult:
    """Update the decoded reference ``ref`` (rendered as ``ref_recon`` [H, W, 3]) towards ``frame``.

    Changed pixels (max-over-RGB residual above ``cfg.pframe_threshold``, cleaned) select the
    Gaussians touching them; only those rows are optimised, for at most ``cfg.pframe_iters``
    steps. Fewer than ``cfg.pframe_min_changed_frac`` changed pixels means a static frame:
    the reference is returned with K = 0 and no work done. Halfway (at once if no Gaussian
    touches the change), where the 5x5-averaged residual still exceeds
    ``cfg.pframe_new_threshold`` (content the reference never had), up to
    ``cfg.pframe_max_new_frac * len(ref)`` new Gaussians are seeded from the residual and
    optimised too, at the I-frame's density. Stops early once fewer than
    ``pframe_min_changed_frac`` of the pixels keep a 5x5-averaged residual above
    ``cfg.pframe_threshold``, at ``cfg.target_psnr_db``, or once the objective gains less than
    ``cfg.pframe_stop_db_per_iter`` dB per step (if that happens before the seeding point, the
    seeding happens then instead); returns the best state seen. With ``cfg.pframe_motion`` the
    touched rows start from :func:`_motion_start`.

    With ``prev_frame`` (the previous *source* frame, [H, W, 3]) a pixel only counts as
    changed if the content changed there too: error the reference already had in static
    content is left alone, so P-frames spend bits on motion rather than on re-fitting
    the I-frame everywhere its error sits above the threshold.
    """
    target, h, w = _check_frame(frame)
    if tuple(ref_recon.shape) != (h, w, 3):
        raise CodecConfigError(
            f"ref_recon must have shape {(h, w, 3)}; got {tuple(ref_recon.shape)}"
        )
    gen = _default_generator(generator)
    recon = ref_recon.detach().to(torch.float32).clamp(0.0, 1.0)
    min_changed = cfg.pframe_min_changed_frac * h * w
    changed = changed_mask(target, recon, cfg.pframe_threshold)
    if prev_frame is not None:
        changed &= changed_mask(target, prev_frame.to(target), cfg.pframe_threshold)
    n_changed = int(changed.sum())
    empty_idx = torch.zeros(0, dtype=torch.int64, device=ref.device)
    if n_changed < max(1.0, min_changed) or cfg.pframe_iters == 0 or len(ref) == 0:
        return PFrameResult(ref, empty_idx, 0, 0, psnr_of(recon, target))

    ref = ref.detach()
    touched = backend.gaussians_touching(ref, changed).to(torch.int64).sort().values
    assemble = _Assembler(ref, touched, backend, h, w, fake_quant)
    start = ref.index(touched)
    n_touched = len(start)
    start_channels = _quant_channels(start, n_touched)  # the rate term counts moves from the ref
    if cfg.pframe_motion and n_touched:
        start = _motion_start(start, assemble, recon, target)
    opt = _RowOptimizer(start, cfg)
    sched = _Schedule(cfg, cfg.pframe_iters)
    stop = _GainStop(cfg.pframe_stop_db_per_iter, cfg.stop_window)
    max_new = int(cfg.pframe_max_new_frac * len(ref))
    px_per_gaussian = h * w / len(ref)
    add_at = 0 if touched.numel() == 0 else cfg.pframe_iters // 2
    added = False
    best_psnr, best = -math.inf, opt.snapshot()
    it = 0
    rate = None  # rate term: cost per unit of change of the touched rows
    if delta_cost is not None and n_touched:
        rate = _RateTerm(start_channels, delta_cost)
    objective = _Objective(
        target,
        backend,
        cfg,
        static=assemble.static,
        fake_quant=fake_quant,
        changed=changed,
        threshold=cfg.pframe_threshold,
        rate=rate,
    )
    while True:
        ev = objective(opt.rows())
        psnr, img = ev.psnr_db, ev.img
        if psnr > best_psnr:
            best_psnr, best = psnr, opt.snapshot()
        if it >= cfg.pframe_iters or psnr >= cfg.target_psnr_db or ev.n_unresolved < min_changed:
            break
        if not added and it >= add_at and max_new > 0:
            added = True
            missing = unresolved_mask(target, img, cfg.pframe_new_threshold) & changed
            n_missing = int(missing.sum())
            if n_missing >= min_changed:
                m = min(max_new, math.ceil(n_missing / px_per_gaussian))
                new = seed_from_residual(target - img, missing, m, gen)
                opt.restructure(torch.arange(len(opt), device=ref.device), new)
                stop.reset()
                continue  # `best` may keep fewer rows: then the seeds did not help and are dropped
        if len(opt) == 0:
            break  # nothing touches the change and nothing could be added
        if stop.update(ev.loss):
            if added or max_new <= 0:
                break
            add_at = it  # the touched rows stalled before the seeding point: seed now
            stop.reset()
        opt.step(ev.grads(), sched.factor(it, ev.loss), h, w)
        it += 1
    out = assemble(best).detach()
    n_added = len(best) - int(touched.numel())
    return PFrameResult(out, touched, n_added, it, best_psnr)
