"""Target-quality mode: per GOP, search the quality ladder for the lowest rate at a quality.

``CodecConfig.target_psnr`` (dB) or ``target_msssim`` asks every GOP to land in the band
[target, target + ``BAND_DB``] (for MS-SSIM the band is in MS-SSIM dB, -10 log10(1 - v)) at
the lowest rate. What the search varies is the *quality*: a real number q in [1, 10] between
the presets' integer levels. ``config_at_quality`` builds the config of a fractional level by
interpolating every setting in which the two neighbouring levels differ (positive floats such as
the Gaussian density and the rate-distortion lambda geometrically, integers such as bit depths
rounded, flags and names switched at the midpoint), so the search follows whatever the quality
ladder is (codec/config.py owns it) and an integer q is exactly that preset. Settings the user
set explicitly (anything that differs from the preset, e.g. ``--iters``) stay fixed.

The search (``search_quality``) measures each trial on a whole-GOP encode, as the decoder will
output it (enhancer included), and moves q by the secant through its measurements (a prior
slope of ``PRIOR_DB_PER_LEVEL`` until it has two), inside the bracket once it has one
(never closer than 15% of the bracket to its ends, so a bracket shrinks at every step).
Decisions and their reasons:

- Trials are full encodes, not cheaper probes (first frames, fewer iterations): their
  quality is what the GOP gets, so the payload written is a trial's, never a re-encode, and the
  band is checked on the real thing. The cost is bounded: ``CodecConfig.target_max_trials``
  (default 6) encodes per GOP; the search stops at the first trial in the band.
- The payload is the trial with the fewest bytes among those reaching the target; when none
  does, the best trial's (highest quality), reported as ``unreachable`` when the top level
  (q = 10) was tried, else ``missed`` (the trial budget ran out first). A target below the
  lowest level's quality gives that level, ``above_band``. None of these fail the encode.
- GOPs search independently (start at the config's own quality level), so GOPs still encode
  in parallel anywhere and the file is deterministic: the same frames and config make the
  same trials and the same bytes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from codec.config import QUALITY_MAX, QUALITY_MIN, CodecConfig, _flatten
from codec.gop import GopEncodeResult, ProgressFn, encode_gop_report
from codec.metrics import MS_SSIM_MIN_SIDE, ms_ssim, psnr_db

TargetMetric = Literal["psnr", "msssim"]
TargetStatus = Literal["in_band", "above_band", "unreachable", "missed"]
BAND_DB = 0.5  # the band above the target a GOP should land in (dB; MS-SSIM dB for MS-SSIM)
PRIOR_DB_PER_LEVEL = 1.0  # the slope a search assumes before it has measured two levels
SLOPE_DB_PER_LEVEL_RANGE = (0.15, 6.0)  # measured slopes are clamped to this
BRACKET_MARGIN = 0.15  # a step inside a bracket keeps this share of its width from either end
Q_STEP = 0.01  # qualities are rounded to this (a finer step changes nothing measurable)
MSSSIM_DB_FLOOR = 1e-10  # 1 - MS-SSIM is floored here before taking its log


def msssim_db(value: float) -> float:
    """MS-SSIM as dB, -10 log10(1 - value): equal steps are equal relative changes in error."""
    return -10.0 * math.log10(max(1.0 - value, MSSSIM_DB_FLOOR))


def target_of(config: CodecConfig) -> tuple[TargetMetric, float] | None:
    """The config's quality target as (metric, value), or None when target mode is off."""
    if config.target_psnr is not None:
        return "psnr", float(config.target_psnr)
    if config.target_msssim is not None:
        return "msssim", float(config.target_msssim)
    return None


def _interpolate(a: Any, b: Any, frac: float) -> Any:
    """The setting ``frac`` of the way from level a's value to level b's."""
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)):
        return b if frac >= 0.5 else a
    if isinstance(a, int) and isinstance(b, int):
        return int(math.floor(a + frac * (b - a) + 0.5))
    if a > 0 and b > 0:
        return float(a * (b / a) ** frac)
    return float(a + frac * (b - a))


def config_at_quality(config: CodecConfig, quality: float) -> CodecConfig:
    """``config`` moved to the (possibly fractional) quality level ``quality`` in [1, 10]: the
    ladder's settings interpolated between the neighbouring levels, the user's own settings
    (where ``config`` differs from its preset) kept, target mode off."""
    if not QUALITY_MIN <= quality <= QUALITY_MAX:
        raise ValueError(f"quality {quality} is outside [{QUALITY_MIN}, {QUALITY_MAX}]")
    compact = config.to_compact()
    name = compact["preset"]
    user = dict(compact.get("overrides", {}))
    for key in ("target_psnr", "target_msssim", "target_max_trials"):
        user.pop(key, None)
    lo = int(math.floor(quality))
    frac = quality - lo
    base = CodecConfig.preset(name, lo)
    ladder: dict[str, Any] = {}
    if frac > 0:
        a = _flatten(base.to_dict())
        b = _flatten(CodecConfig.preset(name, lo + 1).to_dict())
        ladder = {k: _interpolate(a[k], b[k], frac) for k in a if a[k] != b[k]}
    return base.with_overrides(**{**ladder, **user})


@dataclass(frozen=True)
class Trial:
    """One trial encode of a GOP."""

    quality: float
    value: float  # the measured metric (PSNR dB, or MS-SSIM)
    value_db: float  # the same in dB (PSNR, or MS-SSIM dB)
    n_bytes: int  # GOP payload bytes
    seconds: float


@dataclass
class GopTargetReport:
    """What a GOP's search aimed at, reached and cost."""

    metric: TargetMetric
    label: str  # what was computed: "PSNR", "MS-SSIM" or "SSIM" (frames below MS-SSIM's minimum)
    target: float
    band: tuple[float, float]  # [target, target + BAND_DB] in the metric's own units
    reached: float  # the chosen trial's measured value
    quality: float  # the chosen trial's quality level
    status: TargetStatus
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0  # all trial encodes and measurements of this GOP

    @property
    def in_band(self) -> bool:
        return self.status == "in_band"

    @property
    def reached_target(self) -> bool:
        return self.status in ("in_band", "above_band")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["band"] = list(self.band)
        out["n_trials"] = len(self.trials)
        return out


def measure(
    metric: TargetMetric, frames: np.ndarray, output: np.ndarray
) -> tuple[float, float, str]:
    """(value, value in dB, label) of ``output`` against ``frames`` (uint8 [T, H, W, 3] each):
    the mean over frames of RGB PSNR, or of MS-SSIM."""
    if metric == "psnr":
        value = float(np.mean([psnr_db(a, b) for a, b in zip(frames, output, strict=True)]))
        return value, value, "PSNR"
    value = float(np.mean([ms_ssim(a, b)[0] for a, b in zip(frames, output, strict=True)]))
    label = "SSIM" if min(frames.shape[1:3]) < MS_SSIM_MIN_SIDE else "MS-SSIM"
    return value, msssim_db(value), label


def _to_db(metric: TargetMetric, value: float) -> float:
    return value if metric == "psnr" else msssim_db(value)


def _from_db(metric: TargetMetric, value_db: float) -> float:
    return value_db if metric == "psnr" else 1.0 - 10.0 ** (-value_db / 10.0)


def _clamp(q: float) -> float:
    q = min(float(QUALITY_MAX), max(float(QUALITY_MIN), q))
    return round(round(q / Q_STEP) * Q_STEP, 2)


def next_quality(trials: Sequence[Trial], target_db: float) -> float | None:
    """Where to try next, or None when no trial could do better (see the module docstring).
    A pure function of the trials so far, so the search is deterministic."""
    aim = target_db + BAND_DB / 2
    below = [t for t in trials if t.value_db < target_db]
    above = [t for t in trials if t.value_db >= target_db]  # (in the band ended the search)
    lo = max(below, key=lambda t: t.quality) if below else None
    hi = min(above, key=lambda t: t.quality) if above else None
    if lo is not None and hi is not None:
        width = hi.quality - lo.quality
        if width <= 2 * Q_STEP:
            return None  # a step in the ladder: nothing between lo and hi to try
        rise = hi.value_db - lo.value_db
        frac = (aim - lo.value_db) / rise if rise > 0 else 0.5
        frac = min(1 - BRACKET_MARGIN, max(BRACKET_MARGIN, frac))
        q = _clamp(lo.quality + frac * width)
    else:
        last = lo if lo is not None else hi
        assert last is not None
        if (lo is not None and lo.quality >= QUALITY_MAX) or (
            hi is not None and hi.quality <= QUALITY_MIN
        ):
            return None  # below target at the top, or above the band at the bottom
        slope = PRIOR_DB_PER_LEVEL
        ordered = sorted(trials, key=lambda t: t.quality)
        if len(ordered) >= 2:
            a, b = (ordered[-2], ordered[-1]) if lo is not None else (ordered[0], ordered[1])
            if b.quality > a.quality:
                slope = (b.value_db - a.value_db) / (b.quality - a.quality)
        slope = min(SLOPE_DB_PER_LEVEL_RANGE[1], max(SLOPE_DB_PER_LEVEL_RANGE[0], slope))
        q = _clamp(last.quality + (aim - last.value_db) / slope)
    if any(abs(t.quality - q) < Q_STEP / 2 for t in trials):
        return None
    return q


EncodeFn = Callable[[CodecConfig], GopEncodeResult]


def search_quality(
    frames: np.ndarray,
    config: CodecConfig,
    encode: EncodeFn,
    *,
    start_quality: float | None = None,
) -> tuple[GopEncodeResult, GopTargetReport]:
    """Search ``config``'s quality ladder for its target on one GOP's ``frames`` (uint8
    [T, H, W, 3]); ``encode(config)`` runs one trial. Returns the chosen trial's result (never
    re-encoded) and the report. ``config`` must have a target."""
    goal = target_of(config)
    if goal is None:
        raise ValueError("search_quality needs a config with target_psnr or target_msssim")
    metric, target = goal
    target_db = _to_db(metric, target)
    if start_quality is None:
        start_quality = float(config.to_compact()["quality"])
    start = time.perf_counter()
    trials: list[Trial] = []
    best_hit: tuple[int, GopEncodeResult] | None = None  # fewest bytes reaching the target
    best_miss: tuple[float, GopEncodeResult] | None = None  # highest quality below it
    label = "PSNR"
    q: float | None = _clamp(start_quality)
    while q is not None and len(trials) < config.target_max_trials:
        t0 = time.perf_counter()
        result = encode(config_at_quality(config, q))
        value, value_db, label = measure(metric, frames, result.output())
        trial = Trial(q, value, value_db, len(result.payload), time.perf_counter() - t0)
        trials.append(trial)
        if value_db >= target_db:
            if best_hit is None or trial.n_bytes < best_hit[0]:
                best_hit = (trial.n_bytes, result)
            if value_db <= target_db + BAND_DB:
                break
        elif best_miss is None or value_db > best_miss[0]:
            best_miss = (value_db, result)
        del result
        q = next_quality(trials, target_db)
    status: TargetStatus
    if best_hit is not None:
        chosen = best_hit[1]
        pick = min((t for t in trials if t.value_db >= target_db), key=lambda t: t.n_bytes)
        status = "in_band" if pick.value_db <= target_db + BAND_DB else "above_band"
    else:
        assert best_miss is not None
        chosen = best_miss[1]
        pick = max(trials, key=lambda t: t.value_db)
        status = "unreachable" if any(t.quality >= QUALITY_MAX for t in trials) else "missed"
    report = GopTargetReport(
        metric=metric,
        label=label,
        target=target,
        band=(target, _from_db(metric, target_db + BAND_DB)),
        reached=pick.value,
        quality=pick.quality,
        status=status,
        trials=trials,
        seconds=time.perf_counter() - start,
    )
    return chosen, report


def encode_gop_target(
    frames: np.ndarray,
    config: CodecConfig,
    *,
    roi_mask: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
) -> tuple[GopEncodeResult, GopTargetReport | None]:
    """``codec.gop.encode_gop_report`` for one GOP, through the target search when ``config``
    has a target (then with its report), else one plain encode (report None). ``progress``
    hears of every frame of a plain encode, of a searched GOP once it is done."""
    if target_of(config) is None:
        result = encode_gop_report(
            frames, config, roi_mask=roi_mask, progress=progress, device=device
        )
        return result, None

    def encode(cfg: CodecConfig) -> GopEncodeResult:
        return encode_gop_report(frames, cfg, roi_mask=roi_mask, device=device)

    result, report = search_quality(frames, config, encode)
    if progress:
        progress(len(frames), len(frames))
    return result, report


def summarize(reports: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The whole encode's target figures from per-GOP ``GopTargetReport.to_dict()``s (None
    without any): the target, GOPs in the band (hit rate), unreachable GOPs, mean overshoot
    above the target of GOPs that reached it, and the search's cost."""
    if not reports:
        return None
    first = reports[0]
    hits = [r for r in reports if r["status"] in ("in_band", "above_band")]
    n_in = sum(1 for r in reports if r["status"] == "in_band")
    over = [r["reached"] - r["target"] for r in hits]
    trials = sum(int(r["n_trials"]) for r in reports)
    return {
        "metric": first["metric"],
        "label": first["label"],
        "target": first["target"],
        "band": first["band"],
        "gops": len(reports),
        "gops_in_band": n_in,
        "hit_rate": n_in / len(reports),
        "gops_above_band": sum(1 for r in reports if r["status"] == "above_band"),
        "gops_unreachable": sum(1 for r in reports if r["status"] == "unreachable"),
        "gops_missed": sum(1 for r in reports if r["status"] == "missed"),
        "mean_overshoot": float(np.mean(over)) if over else None,
        "trial_encodes": trials,
        "trials_per_gop": trials / len(reports),
        "search_seconds": float(sum(float(r["seconds"]) for r in reports)),
    }


def describe(summary: dict[str, Any]) -> list[str]:
    """Lines for a person: the hit rate and cost, and a clear line for each GOP that did not
    reach the target (the encode still succeeded)."""
    unit = " dB" if summary["metric"] == "psnr" else ""
    fmt = "{:.2f}" if summary["metric"] == "psnr" else "{:.4f}"
    target = fmt.format(summary["target"]) + unit
    lines = [
        f"target {summary['label']} {target}: {summary['gops_in_band']}/{summary['gops']} GOPs "
        f"in [{fmt.format(summary['band'][0])}, {fmt.format(summary['band'][1])}]{unit}, "
        f"{summary['trial_encodes']} trial encodes ({summary['trials_per_gop']:.1f} per GOP), "
        f"{summary['search_seconds']:.1f} s searching"
    ]
    if summary["gops_unreachable"]:
        lines.append(
            f"target {target} not reachable within the quality limits (q{QUALITY_MAX} is the "
            f"highest) in {summary['gops_unreachable']} GOP(s): they were encoded at the best "
            "quality tried; see the per-GOP report"
        )
    if summary["gops_missed"]:
        lines.append(
            f"target {target} not reached within the trial budget in {summary['gops_missed']} "
            "GOP(s) (raise target_max_trials): they were encoded at the best quality tried"
        )
    return lines
