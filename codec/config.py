"""Typed codec configuration with named presets and a quality level.

``CodecConfig.preset("fast", quality=5)`` is the usual way in. Every field is
validated in ``__post_init__`` and a bad value raises :class:`CodecConfigError`
naming the field and its valid range. Configs are frozen so they can be hashed,
shipped to Ray workers and recorded in manifests (``to_dict`` / ``from_dict``).

Ownership while the codec is being built: ``FitConfig`` belongs to fitting
(``codec/fit.py``, ``codec/init.py``), ``QuantConfig`` to quantisation and
entropy coding (``codec/quant.py``, ``codec/entropy.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from codec.errors import CodecConfigError

InitMethod = Literal["superpixel", "random"]
LrSchedule = Literal["plateau", "cosine"]
BudgetMode = Literal["density", "rd"]
QuantMode = Literal["ptq", "qat"]
PresetName = Literal["ultrafast", "fast", "slow"]
PRESETS: tuple[str, ...] = ("ultrafast", "fast", "slow")  # the speed ladder, fastest first
EnhanceMode = Literal["off", "base", "on", "filter"]
ENHANCE_MODES = ("off", "base", "on", "filter")

QUALITY_MIN, QUALITY_MAX = 1, 10
# target-quality mode (codec/target.py): the targets a user may ask for, and the trial encodes
# a GOP's search may spend (each is a whole GOP encode)
TARGET_PSNR_RANGE = (10.0, 99.0)  # dB, RGB PSNR on 8-bit frames (reports cap PSNR at 100)
TARGET_MSSSIM_RANGE = (0.5, 0.9999)  # MS-SSIM (SSIM on frames below MS-SSIM's 161 px minimum)
TARGET_TRIALS_DEFAULT, TARGET_TRIALS_MAX = 6, 12


def _check_target(name: str, value: float | None, lo: float, hi: float, what: str) -> None:
    """A target is None (off) or a finite number in [lo, hi]; the error names the field."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CodecConfigError(f"{name}={value!r} is not a number; use {what} in [{lo}, {hi}]")
    if not math.isfinite(value):
        raise CodecConfigError(
            f"{name}={value!r} is not a finite number; use {what} in [{lo}, {hi}]"
        )
    if not lo <= value <= hi:
        raise CodecConfigError(f"{name}={value!r} is out of range; use {what} in [{lo}, {hi}]")


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not (lo <= value <= hi):
        raise CodecConfigError(f"{name}={value!r} is out of range; use a value in [{lo}, {hi}]")


@dataclass(frozen=True)
class FitConfig:
    """How Gaussians are fitted to frames."""

    gaussians_per_kpx: float = 40.0  # Gaussians per 1000 pixels in an I-frame (budget="density")
    # I-frame Gaussian budget: "density" = gaussians_per_kpx, scaled down on flat frames
    # (codec.init.count_for_detail); "rd" = per block, the count that minimises D + lambda R at
    # the level's lambda (pframe_rd_lambda, the same slope the P-frames use; with it 0, "rd"
    # falls back to "density"), see codec.init.rd_gaussian_count; budget_fit_gain calibrates
    # its distortion model
    budget: BudgetMode = "density"
    budget_fit_gain: float = 0.4
    # "rd" budget over the GOP: each block's distortion counts persistence**budget_persistence
    # times, persistence = the frames its content lives for (codec.init.block_persistence, with
    # budget_persistence_tau in 8-bit levels^2); 0 = the I-frame alone
    budget_persistence: float = 0.0
    budget_persistence_tau: float = 16.0
    # ... and a Gaussian's bits count 1 + budget_update_cost * (frames its block has changed)
    budget_update_cost: float = 0.0
    # with densify: the I-frame starts from this share of its budget and densification (splits
    # and seeds) grows it to the budget
    budget_init_share: float = 1.0
    init: InitMethod = "superpixel"
    roi_share: float = (
        0.5  # fraction of Gaussians placed inside the region of interest, when one is given
    )
    iframe_iters: int = 600  # iteration cap for I-frames
    pframe_iters: int = 120  # iteration cap for P-frames
    target_psnr_db: float = 60.0  # stop early once the fit reaches this PSNR (60 = effectively off)
    lr: float = 0.02  # base Adam learning rate (scaled per attribute inside fit)
    densify: bool = False  # error-guided densification and pruning in I-frames
    pframe_threshold: float = (
        6.0 / 255.0
    )  # per-pixel residual (max over RGB, [0,1] units) that marks a pixel changed
    # P-frame rate control: an update is sent only if the energy of the change it makes to the
    # rendered image (codec.gaussians.change_energy, in 8-bit levels^2 * px) reaches this
    pframe_min_update_energy: float = 0.0
    # P-frame rate control by rate-distortion optimisation (codec.rdo): an update or added Gaussian is
    # sent only if it lowers the squared error (8-bit levels^2 summed over pixels and channels) by at
    # least this many per estimated bit; 0 = off (then pframe_min_update_energy applies)
    pframe_rd_lambda: float = 0.0
    # with pframe_rd_lambda: the P-frame fit also pays this multiple of lambda * (estimated bits) for
    # moving a Gaussian away from the reference (an L1 rate term), so it prefers sparse, small updates
    pframe_rate_weight: float = 0.0
    pframe_max_new_frac: float = 0.05
    # scene cut: a frame whose previous reconstruction is below this PSNR is coded as an I-frame
    # (inside the GOP, on the GOP's quantisation grid); 0 disables
    scene_cut_psnr_db: float = 20.0  # at most this fraction of N new Gaussians per P-frame
    # Per-attribute Adam step sizes are lr * mult: xy and chol in pixels, rgb in [0,1] colour units.
    lr_xy_mult: float = 10.0
    lr_chol_mult: float = 5.0
    lr_rgb_mult: float = 1.0
    lr_schedule: LrSchedule = (
        "plateau"  # "plateau": decay when the loss stalls; "cosine": over the iteration cap
    )
    lr_warmup_iters: int = 0  # linear warm-up from 10% of the rate (0 = none)
    lr_min_frac: float = 0.05  # the schedule never goes below lr * lr_min_frac
    lr_patience: int = 40  # plateau: iterations without a 0.1% loss improvement before decaying
    lr_decay: float = 0.5  # plateau: factor applied at each decay
    ssim_weight: float = 0.0  # loss = (1 - w) * MSE + w * (1 - SSIM); 0 = plain L2 (fastest)
    densify_every: int = 100  # I-frame densification period (iterations), when densify is on
    densify_until_frac: float = 0.6  # densify only during this leading share of iframe_iters
    prune_rgb_eps: float = (
        2.0 / 255.0
    )  # densify: Gaussians whose largest |rgb| is below this are pruned
    # densify (codec.densify): share of the free rows spent on splitting the large Gaussians with
    # the most error under them (the rest are seeded at residual peaks); 0 = seeds only
    densify_split_share: float = 0.0
    # densify: also prune Gaussians whose removal costs less than pframe_rd_lambda * this many
    # bits of squared error (8-bit levels^2), i.e. that do not pay at the level's slope; 0 = off
    densify_prune_bits: float = 0.0
    pframe_min_changed_frac: float = (
        0.001  # P-frames with fewer changed pixels than this share are static
    )
    pframe_new_threshold: float = (
        16.0 / 255.0
    )  # 5x5-mean residual above which a P-frame adds Gaussians
    # Early stopping (codec/fit.py): a fit stops once its objective (the loss, best so far) fell by
    # less than `stop_window` * this many dB over the last `stop_window` iterations, i.e. once the
    # gain per iteration is below it; 0 = run to the iteration cap. The caps stay as upper bounds.
    iframe_stop_db_per_iter: float = 0.0
    pframe_stop_db_per_iter: float = 0.0
    stop_window: int = 20  # iterations the gain is measured over (also the fewest a fit runs)
    # P-frame motion warm start: dense optical flow (OpenCV DIS) from the decoded previous frame to
    # the new one moves the centres of the Gaussians a P-frame optimises before its fit (encoder
    # only: the bitstream still carries the fitted positions)
    pframe_motion: bool = False

    def __post_init__(self) -> None:
        _check_range("gaussians_per_kpx", self.gaussians_per_kpx, 0.5, 1000.0)
        _check_range("budget_fit_gain", self.budget_fit_gain, 1e-4, 100.0)
        _check_range("budget_persistence", self.budget_persistence, 0.0, 2.0)
        _check_range("budget_persistence_tau", self.budget_persistence_tau, 1e-3, 1e6)
        _check_range("budget_update_cost", self.budget_update_cost, 0.0, 10.0)
        _check_range("budget_init_share", self.budget_init_share, 0.05, 1.0)
        _check_range("densify_split_share", self.densify_split_share, 0.0, 1.0)
        _check_range("densify_prune_bits", self.densify_prune_bits, 0.0, 1e4)
        if self.budget not in ("density", "rd"):
            raise CodecConfigError(f"budget={self.budget!r} is unknown; use 'density' or 'rd'")
        _check_range("roi_share", self.roi_share, 0.0, 0.95)
        _check_range("iframe_iters", self.iframe_iters, 0, 100_000)
        _check_range("pframe_iters", self.pframe_iters, 0, 100_000)
        _check_range("target_psnr_db", self.target_psnr_db, 10.0, 100.0)
        _check_range("lr", self.lr, 1e-6, 1.0)
        _check_range("pframe_threshold", self.pframe_threshold, 0.0, 1.0)
        _check_range("pframe_max_new_frac", self.pframe_max_new_frac, 0.0, 1.0)
        _check_range("pframe_min_update_energy", self.pframe_min_update_energy, 0.0, 1e9)
        _check_range("pframe_rd_lambda", self.pframe_rd_lambda, 0.0, 1e9)
        _check_range("pframe_rate_weight", self.pframe_rate_weight, 0.0, 1e6)
        _check_range("scene_cut_psnr_db", self.scene_cut_psnr_db, 0.0, 100.0)
        _check_range("lr_xy_mult", self.lr_xy_mult, 0.0, 1000.0)
        _check_range("lr_chol_mult", self.lr_chol_mult, 0.0, 1000.0)
        _check_range("lr_rgb_mult", self.lr_rgb_mult, 0.0, 1000.0)
        _check_range("lr_warmup_iters", self.lr_warmup_iters, 0, 100_000)
        _check_range("lr_min_frac", self.lr_min_frac, 0.0, 1.0)
        _check_range("lr_patience", self.lr_patience, 1, 100_000)
        _check_range("lr_decay", self.lr_decay, 0.01, 1.0)
        _check_range("ssim_weight", self.ssim_weight, 0.0, 1.0)
        _check_range("densify_every", self.densify_every, 1, 100_000)
        _check_range("densify_until_frac", self.densify_until_frac, 0.0, 1.0)
        _check_range("prune_rgb_eps", self.prune_rgb_eps, 0.0, 1.0)
        _check_range("pframe_min_changed_frac", self.pframe_min_changed_frac, 0.0, 1.0)
        _check_range("pframe_new_threshold", self.pframe_new_threshold, 0.0, 1.0)
        _check_range("iframe_stop_db_per_iter", self.iframe_stop_db_per_iter, 0.0, 10.0)
        _check_range("pframe_stop_db_per_iter", self.pframe_stop_db_per_iter, 0.0, 10.0)
        _check_range("stop_window", self.stop_window, 1, 10_000)
        if self.lr_schedule not in ("plateau", "cosine"):
            raise CodecConfigError(
                f"lr_schedule={self.lr_schedule!r} is unknown; use 'plateau' or 'cosine'"
            )
        if self.init not in ("superpixel", "random"):
            raise CodecConfigError(f"init={self.init!r} is unknown; use 'superpixel' or 'random'")


# The speed ladder's fitting settings (BENCHMARKS.md "Encode speed: fewer iterations",
# bench/fit_speed.py, q4 on carphone, Megamind and box). `fast` keeps running its fits to the
# caps: stopping at a gain of 0.005 (0.0025) dB per iteration cut CPU time to x0.78 / x0.42 /
# x0.32 (x0.78 / x0.62 / x0.48) but lost 0.21 (0.20) dB on carphone and 0.22 (0.15) dB on box
# at equal rate, more than `fast` may lose on any clip (Megamind gained 0.4-0.6 dB). The motion
# warm start never hurt: +0.05 / +0.11 / +0.02 dB for +0.9 / +0.2 / -0.1% rate, so `fast` uses it.
# `ultrafast` trades quality for time: caps of 150 / 40 iterations and stops at 0.01 dB per
# iteration, x0.37 / x0.29 / x0.25 CPU time for -0.83 dB at -3.0% rate on carphone, +0.02 dB at
# +0.3% on Megamind, -0.47 dB at +0.8% on box.
_FAST_FIT: dict[str, Any] = {"pframe_motion": True}
_ULTRAFAST_FIT: dict[str, Any] = {
    "iframe_iters": 150,
    "pframe_iters": 40,
    "iframe_stop_db_per_iter": 0.01,
    "pframe_stop_db_per_iter": 0.01,
}


# Densification in the fast and slow presets (issue 14, item 2; BENCHMARKS.md "Quality on any
# content"): the I-frame starts from 80% of its budget and grows into it, half of the new rows
# by splitting large Gaussians under high error, half seeded at residual peaks; Gaussians whose
# removal costs less than lambda * 40 bits are pruned (and their rows re-used).
_DENSIFY: dict[str, Any] = {
    "densify": True,
    "budget_init_share": 0.8,
    "densify_split_share": 0.5,
    "densify_prune_bits": 40.0,
}

# The quality ladder (issue 14, item 3): ONE rate-distortion slope per level, lambda (8-bit
# levels^2 per bit), geometric from LADDER_LAMBDA_Q1 at q1 to LADDER_LAMBDA_Q10 at q10, and every
# knob follows it: the I-frame budget (codec.init.rd_gaussian_count), the P-frame choices
# (codec.rdo), the quantiser (a step ~ sqrt(lambda): one more bit per 4x lower lambda, colour
# half a bit ahead of the Cholesky factors so that every level moves one of them) and the
# P-frame change thresholds (~ lambda^(1/4), so high levels keep refining what low levels leave).
# The old ladder stepped density, bits and lambda separately and climbed unevenly (carphone q7
# -> q8 +0.66 dB; Megamind q3 -> q4 -0.30 dB, q9 -> q10 +0.23 dB).
LADDER_LAMBDA_Q1, LADDER_LAMBDA_Q10 = 1700.0, 7.8
LADDER_BITS_AT_500 = 6.0  # attribute bits at lambda 500 (the old q4: 6 bits)
LADDER_THRESHOLD_AT_500 = 6.0  # P-frame changed-pixel threshold (levels) at lambda 500
LADDER_NEW_OVER_CHANGED = 16.0 / 6.0  # new-content threshold over the changed-pixel one


def ladder_rung(quality: int) -> dict[str, Any]:
    """The coding knobs of quality level ``quality`` (1..10): lambda, bits, P-frame thresholds."""
    t = (quality - QUALITY_MIN) / (QUALITY_MAX - QUALITY_MIN)
    lam = LADDER_LAMBDA_Q1 * (LADDER_LAMBDA_Q10 / LADDER_LAMBDA_Q1) ** t
    x = LADDER_BITS_AT_500 + 0.5 * math.log2(500.0 / lam)
    thr = min(8.0, max(2.0, LADDER_THRESHOLD_AT_500 * (lam / 500.0) ** 0.25))
    return {
        "lambda": round(lam, 2),
        # position step ~ sqrt(lambda) below 0.2 px from q5 up: at 160 Gaussians per kpx a
        # 0.2 px step alone cost carphone's I-frame 5.7 dB (0.05 px: 0.8 dB)
        "xy_step_px": round(min(0.2, max(0.05, 0.2 * math.sqrt(lam / 283.0))), 3),
        "chol_bits": int(round(x - 0.25)),
        "rgb_bits": int(round(x + 0.25)),
        "pframe_threshold": round(thr / 255.0, 5),
        "pframe_new_threshold": round(thr * LADDER_NEW_OVER_CHANGED / 255.0, 5),
    }


@dataclass(frozen=True)
class QuantConfig:
    """Per-attribute bit depths and the quantisation scheme."""

    mode: QuantMode = "ptq"
    xy_bits: int = (
        12  # position grid: at most 2**xy_bits steps across the larger frame side (plus margins)
    )
    # target position step in pixels: the grid uses the bit depth whose step is nearest this (capped by
    # xy_bits), so small frames do not pay for sub-0.1 px precision; 0 = always use xy_bits. On carphone
    # (176x144) 10 bits (0.21 px) instead of 12 saved 12.6% of the bits for 0.26 dB.
    xy_step_px: float = 0.2
    chol_bits: int = 7
    rgb_bits: int = 7
    bits_back: bool = False  # bits-back coding of the ordering freedom (option; see entropy.py)
    xy_margin: float = 0.125  # position grid spans this share of the larger side past each edge
    range_quantile: float = 0.001  # chol/rgb ranges: this quantile .. 1 - it (robust)
    # P-frame updates land on a grid 2**k times finer than the I-frame's (positions; Cholesky and
    # colour), so a fitted refinement smaller than half an I-frame step is not rounded away
    pframe_xy_refine: int = 0
    pframe_attr_refine: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("ptq", "qat"):
            raise CodecConfigError(f"mode={self.mode!r} is unknown; use 'ptq' or 'qat'")
        _check_range("xy_bits", self.xy_bits, 6, 16)
        _check_range("xy_step_px", self.xy_step_px, 0.0, 16.0)
        _check_range("chol_bits", self.chol_bits, 2, 12)
        _check_range("rgb_bits", self.rgb_bits, 2, 12)
        _check_range("xy_margin", self.xy_margin, 0.0, 1.0)
        _check_range("range_quantile", self.range_quantile, 0.0, 0.25)
        # fine grids stay within 16 position bits and 12 attribute bits, at most 16 levels per level
        _check_range("pframe_xy_refine", self.pframe_xy_refine, 0, min(4, 16 - self.xy_bits))
        top = min(4, 12 - max(self.chol_bits, self.rgb_bits))
        _check_range("pframe_attr_refine", self.pframe_attr_refine, 0, top)
        if self.bits_back:
            raise CodecConfigError(
                "bits_back=True is not supported: the intra coder already sends each frame's Gaussians "
                "as a sorted set (Morton gap coding), which recovers the log2(N!) ordering freedom that "
                "bits-back coding would (see codec.entropy.ordering_freedom_bits); use bits_back=False"
            )


@dataclass(frozen=True)
class CodecConfig:
    """Everything that decides the bitstream, plus the seed that makes it deterministic."""

    gop: int = 30  # frames per GOP (an I-frame every `gop` frames)
    fit: FitConfig = field(default_factory=FitConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    seed: int = 0
    # render backend for fitting ("auto": the fused C++ "cpu" kernel on the CPU when it builds,
    # else "patch"); reconstruction always uses the decoder's (canonical) renderer
    backend: str = "auto"
    # post-decoding enhancer (codec/enhance): "off"; "base" (the network at a per-GOP strength);
    # "on" (strength plus the per-GOP modulation, and the per-GOP filter, where they pay);
    # "filter" (the per-GOP least-squares filter alone, GOP format 7: no network, no weights). A
    # post-filter: the Gaussians and the closed loop are the same either way.
    enhance: EnhanceMode = "off"
    # target-quality mode (codec/target.py): each GOP searches the quality ladder (a continuous
    # quality between the presets' integer levels) for the lowest rate whose quality lands in
    # [target, target + 0.5 dB]; at most one of the two targets; None = off (the preset's level).
    # The MS-SSIM band is 0.5 dB of -10 log10(1 - MS-SSIM).
    target_psnr: float | None = None  # mean per-frame RGB PSNR of a GOP, dB
    target_msssim: float | None = None  # mean per-frame MS-SSIM of a GOP, 0..1
    target_max_trials: int = TARGET_TRIALS_DEFAULT  # trial encodes per GOP at most

    def __post_init__(self) -> None:
        _check_range("gop", self.gop, 1, 10_000)
        _check_range("seed", self.seed, 0, 2**31 - 1)
        _check_target("target_psnr", self.target_psnr, *TARGET_PSNR_RANGE, "a PSNR in dB")
        _check_target("target_msssim", self.target_msssim, *TARGET_MSSSIM_RANGE, "an MS-SSIM value")
        if self.target_psnr is not None and self.target_msssim is not None:
            raise CodecConfigError(
                "target_psnr and target_msssim are both set; ask for one quality target"
            )
        if isinstance(self.target_max_trials, bool) or not isinstance(self.target_max_trials, int):
            raise CodecConfigError(
                f"target_max_trials={self.target_max_trials!r} is not an integer; "
                f"use 1..{TARGET_TRIALS_MAX}"
            )
        _check_range("target_max_trials", self.target_max_trials, 1, TARGET_TRIALS_MAX)
        if self.enhance not in ENHANCE_MODES:
            raise CodecConfigError(
                f"enhance={self.enhance!r} is unknown; use one of {', '.join(ENHANCE_MODES)}"
            )

    @staticmethod
    def preset(name: PresetName = "fast", quality: int = 5, **overrides: Any) -> CodecConfig:
        """The named preset at a quality level 1 (smallest) .. 10 (best)."""
        if name not in PRESETS:
            raise CodecConfigError(
                f"preset={name!r} is unknown; use one of {', '.join(map(repr, PRESETS))}"
            )
        if not isinstance(quality, int) or not (QUALITY_MIN <= quality <= QUALITY_MAX):
            raise CodecConfigError(
                f"quality={quality!r} is out of range; use an integer in [{QUALITY_MIN}, {QUALITY_MAX}]"
            )
        density = 10.0 * (1.3 ** (quality - 1))  # 10 .. ~106 Gaussians per kpx (budget="density")
        rung = ladder_rung(quality)
        lam = rung["lambda"]
        # sub-level P-frame positions (GOP format 4) pay from q6 up: +0.84 dB for +11% rate at q8
        xy_refine = 1 if quality >= 6 else 0
        common_fit: dict[str, Any] = {
            "gaussians_per_kpx": density,
            "budget": "rd",
            "pframe_rd_lambda": lam,
            "pframe_rate_weight": 1.0,
            "pframe_threshold": rung["pframe_threshold"],
            "pframe_new_threshold": rung["pframe_new_threshold"],
        }
        bits = {
            "chol_bits": rung["chol_bits"],
            "rgb_bits": rung["rgb_bits"],
            "xy_step_px": rung["xy_step_px"],
        }
        if name in ("fast", "ultrafast"):
            # the speed ladder (BENCHMARKS.md "Encode speed: fewer iterations"): the same coding
            # tools, fits that stop once they gain less than a threshold per iteration
            fit_kw: dict[str, Any] = {
                **common_fit,
                "iframe_iters": 400,
                "pframe_iters": 120,  # 60 cost 0.25 dB at q4 for 2.7% less rate
            }
            fit_kw.update(_ULTRAFAST_FIT if name == "ultrafast" else {**_FAST_FIT, **_DENSIFY})
            fit = FitConfig(**fit_kw)
            quant = QuantConfig(mode="ptq", pframe_xy_refine=xy_refine, **bits)
        else:
            fit = FitConfig(
                **common_fit,
                **_DENSIFY,
                iframe_iters=2000,
                pframe_iters=200,
            )
            # QAT lets the fit live with a clipped range (1% tails): +0.33 dB on the I-frame and
            # +0.27 dB over fast at equal rate on carphone q4 (20 frames); with the full range
            # slow was no better than fast (BENCHMARKS.md, "slow preset")
            quant = QuantConfig(mode="qat", range_quantile=0.01, pframe_xy_refine=xy_refine, **bits)
        cfg = CodecConfig(fit=fit, quant=quant)
        return cfg.with_overrides(**overrides) if overrides else cfg

    def with_overrides(self, **overrides: Any) -> CodecConfig:
        """A copy with top-level fields replaced; ``fit__x`` / ``quant__y`` reach nested fields."""
        top: dict[str, Any] = {}
        fit_kw: dict[str, Any] = {}
        quant_kw: dict[str, Any] = {}
        for key, value in overrides.items():
            if key.startswith("fit__"):
                fit_kw[key[5:]] = value
            elif key.startswith("quant__"):
                quant_kw[key[7:]] = value
            else:
                top[key] = value
        try:
            fit = replace(self.fit, **fit_kw) if fit_kw else self.fit
            quant = replace(self.quant, **quant_kw) if quant_kw else self.quant
            return replace(self, fit=fit, quant=quant, **top)
        except TypeError as exc:
            raise CodecConfigError(f"unknown config field: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_compact(self) -> dict[str, Any]:
        """The shortest description that rebuilds this config (for stream headers, where every
        byte counts in bpp): the preset and quality with the fewest differing fields, plus those
        fields as ``with_overrides`` keys. ``from_dict`` reads it back."""
        full = _flatten(self.to_dict())
        best: tuple[str, int, dict[str, Any]] | None = None
        for name in ("fast", "slow", "ultrafast"):  # ties go to the earlier name
            for quality in range(QUALITY_MIN, QUALITY_MAX + 1):
                base = _flatten(CodecConfig.preset(name, quality).to_dict())  # type: ignore[arg-type]
                diff = {k: v for k, v in full.items() if base.get(k) != v}
                if best is None or len(diff) < len(best[2]):
                    best = (name, quality, diff)
        assert best is not None
        name, quality, diff = best
        out: dict[str, Any] = {"preset": name, "quality": quality}
        if diff:
            out["overrides"] = diff
        return out

    @staticmethod
    def from_dict(data: dict[str, Any]) -> CodecConfig:
        """Inverse of :meth:`to_dict` and :meth:`to_compact`; unknown keys raise
        :class:`CodecConfigError`."""
        if "preset" in data:
            extra = set(data) - {"preset", "quality", "overrides"}
            overrides = data.get("overrides", {})
            if extra or not isinstance(overrides, dict):
                raise CodecConfigError(
                    f"bad compact config: unexpected {sorted(extra) or 'overrides'}"
                )
            return CodecConfig.preset(data["preset"], data.get("quality", 5), **overrides)
        try:
            known = {f.name for f in fields(CodecConfig)}
            extra = set(data) - known
            if extra:
                raise CodecConfigError(f"unknown config fields {sorted(extra)}")
            kw = dict(data)
            if "fit" in kw:
                kw["fit"] = FitConfig(**kw["fit"])
            if "quant" in kw:
                kw["quant"] = QuantConfig(**kw["quant"])
            return CodecConfig(**kw)
        except TypeError as exc:
            raise CodecConfigError(f"bad config: {exc}") from exc


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["fit__lr=0.01", "gop=12", "fit__densify=true"]`` as ``with_overrides`` keyword arguments:
    values become int, float or bool where they read as one, else stay strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise CodecConfigError(
                f"override {item!r}: use KEY=VALUE, e.g. fit__pframe_rd_lambda=670"
            )
        out[key] = _literal(text)
    return out


def _literal(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _flatten(d: dict[str, Any]) -> dict[str, Any]:
    """``to_dict`` output as ``with_overrides`` keys: top-level fields, ``fit__x``, ``quant__y``."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update({f"{key}__{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out
