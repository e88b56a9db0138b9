"""codec.metrics: PSNR, MS-SSIM (with SSIM fallback), bpp and BD-rate on hand-computable cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from codec.errors import CodecConfigError
from codec.metrics import (
    MS_SSIM_MIN_SIDE,
    PSNR_CAP_DB,
    QualityMeter,
    bd_rate,
    bits_per_pixel,
    clip_metrics,
    ms_ssim,
    perceptual_metrics,
    psnr_db,
)


def test_psnr_known_values() -> None:
    a = np.zeros((10, 12, 3), np.uint8)
    assert psnr_db(a, a + 1) == pytest.approx(10 * math.log10(255**2))  # MSE 1: 48.13 dB
    assert psnr_db(a, np.full_like(a, 255)) == pytest.approx(0.0)
    b = a.copy()
    b[:5] = 4  # half the samples off by 4: MSE 8
    assert psnr_db(a, b) == pytest.approx(10 * math.log10(255**2 / 8))
    c = a.copy()
    c[0, 0, 0] = 2  # one sample off by 2 in 360: MSE 4/360
    assert psnr_db(a, c) == pytest.approx(10 * math.log10(255**2 * 90))


def test_psnr_identical_frames_hit_the_cap() -> None:
    a = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    assert psnr_db(a, a.copy()) == PSNR_CAP_DB == 100.0
    big = np.zeros((400, 400, 3), np.uint8)
    near = big.copy()
    near[0, 0, 0] = 1  # a finite 104.9 dB is capped too
    assert psnr_db(big, near) == PSNR_CAP_DB


def test_psnr_rejects_mismatched_input() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(CodecConfigError):
        psnr_db(a, np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(CodecConfigError):
        psnr_db(a, a.astype(np.float32))  # type: ignore[arg-type]
    with pytest.raises(CodecConfigError):
        psnr_db(a[None], a[None])


def test_ms_ssim_uses_ssim_below_the_minimum_size() -> None:
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (23, 37, 3), dtype=np.uint8)
    value, fallback = ms_ssim(small, small)
    assert fallback is True and value == pytest.approx(1.0, abs=1e-6)

    side = MS_SSIM_MIN_SIDE
    big = rng.integers(0, 256, (side, side + 20, 3), dtype=np.uint8)
    value, fallback = ms_ssim(big, big)
    assert fallback is False and value == pytest.approx(1.0, abs=1e-6)
    noisy = np.clip(big.astype(int) + rng.integers(-40, 41, big.shape), 0, 255).astype(np.uint8)
    value, _ = ms_ssim(big, noisy)
    assert 0.0 < value < 0.99
    _, fallback = ms_ssim(big[: side - 1], big[: side - 1])
    assert fallback is True


def test_clip_metrics_means_and_per_frame_lists() -> None:
    orig = np.zeros((3, 20, 30, 3), np.uint8)
    recon = orig.copy()
    recon[1] += 1  # frame 1: MSE 1
    recon[2] += 2  # frame 2: MSE 4
    m = clip_metrics(orig, recon)
    per = [100.0, 10 * math.log10(255**2), 10 * math.log10(255**2 / 4)]
    assert m["psnr_db_per_frame"] == pytest.approx(per)
    assert m["psnr_db"] == round(sum(per) / 3, 2)
    assert m["n_frames"] == 3 and len(m["ms_ssim_per_frame"]) == 3
    assert m["ms_ssim_per_frame"][0] == pytest.approx(1.0, abs=1e-6)
    assert m["ms_ssim_is_ssim"] is True
    with pytest.raises(CodecConfigError):
        clip_metrics(orig, recon[:2])


def test_bits_per_pixel() -> None:
    assert bits_per_pixel(1000, 10, 10, 8) == 10.0
    assert bits_per_pixel(0, 176, 144, 60) == 0.0
    with pytest.raises(CodecConfigError):
        bits_per_pixel(10, 0, 10, 1)


RATES_A = [0.1, 0.2, 0.4, 0.8, 1.6]
PSNR_A = [30.0, 33.0, 35.5, 37.5, 39.0]


def test_bd_rate_constant_rate_ratio_is_exact() -> None:
    rates_b = [r * 0.9 for r in RATES_A]
    assert bd_rate(RATES_A, PSNR_A, rates_b, PSNR_A) == pytest.approx(-10.0, abs=1e-9)
    assert bd_rate(rates_b, PSNR_A, RATES_A, PSNR_A) == pytest.approx(100 / 9, abs=1e-9)
    assert bd_rate(RATES_A, PSNR_A, RATES_A, PSNR_A) == pytest.approx(0.0, abs=1e-12)


def test_bd_rate_integrates_only_the_overlap() -> None:
    # log-rate of A is an exact cubic in PSNR, so both fits are exact
    def log_a(p: float) -> float:
        return -4.0 + 0.2 * (p - 30) + 0.01 * (p - 30) ** 2 - 0.001 * (p - 30) ** 3

    psnr_a = [28.0, 31.0, 34.0, 37.0, 40.0]
    rates_a = [math.exp(log_a(p)) for p in psnr_a]
    # B: 20% fewer bits at equal PSNR, sampled on a narrower range (and in another order)
    psnr_b = [36.0, 33.5, 35.0, 32.0]
    rates_b = [0.8 * math.exp(log_a(p)) for p in psnr_b]
    assert bd_rate(rates_a, psnr_a, rates_b, psnr_b) == pytest.approx(-20.0, abs=1e-9)


def test_bd_rate_is_the_mean_log_rate_difference() -> None:
    # log rate_B - log rate_A = (p - 30) / 30 over the common range [30, 39]: mean 0.15
    psnr = [30.0, 32.0, 35.0, 37.0, 39.0]
    rates_a = [math.exp(p / 10) for p in psnr]
    rates_b = [math.exp(p / 10 + (p - 30) / 30) for p in psnr]
    assert bd_rate(rates_a, psnr, rates_b, psnr) == pytest.approx(
        (math.exp(0.15) - 1) * 100, abs=1e-9
    )


def test_bd_rate_without_overlap_is_none() -> None:
    assert bd_rate(RATES_A, PSNR_A, RATES_A, [p + 10 for p in PSNR_A]) is None
    touching = [39.0, 40.0, 41.0, 42.0]  # shares one PSNR value only: no interval
    assert bd_rate(RATES_A, PSNR_A, [1.0, 2.0, 3.0, 4.0], touching) is None


def test_bd_rate_needs_four_points_and_positive_rates() -> None:
    with pytest.raises(CodecConfigError, match="at least 4"):
        bd_rate(RATES_A[:3], PSNR_A[:3], RATES_A, PSNR_A)
    with pytest.raises(CodecConfigError, match="at least 4"):
        bd_rate(RATES_A, PSNR_A, [0.1, 0.2, 0.3, 0.4], [30.0, 30.0, 31.0, 32.0])
    with pytest.raises(CodecConfigError, match="positive"):
        bd_rate([0.0, *RATES_A[1:]], PSNR_A, RATES_A, PSNR_A)
    with pytest.raises(CodecConfigError, match="equally long"):
        bd_rate(RATES_A, PSNR_A[:4], RATES_A, PSNR_A)


def test_perceptual_metrics_means_over_frames_and_none_when_small() -> None:
    rng = np.random.default_rng(5)
    orig = rng.integers(40, 200, (3, 40, 48, 3), dtype=np.uint8)
    same = perceptual_metrics(orig, orig.copy())
    assert same == {"dss": 1.0, "haarpsi": 1.0}
    light = np.clip(orig.astype(int) + rng.integers(-6, 7, orig.shape), 0, 255).astype(np.uint8)
    heavy = np.clip(orig.astype(int) + rng.integers(-60, 61, orig.shape), 0, 255).astype(np.uint8)
    m_light, m_heavy = perceptual_metrics(orig, light), perceptual_metrics(orig, heavy)
    assert 0 < m_heavy["dss"] < m_light["dss"] < 1  # type: ignore[operator]
    assert 0 < m_heavy["haarpsi"] < m_light["haarpsi"] < 1  # type: ignore[operator]
    one = perceptual_metrics(orig[1], heavy[1])  # one frame [H, W, 3]
    assert one["dss"] is not None and 0 < one["dss"] < 1
    assert perceptual_metrics(orig[:, :31], heavy[:, :31]) == {"dss": None, "haarpsi": None}


def test_quality_meter_chunks_give_the_whole_clip_means() -> None:
    rng = np.random.default_rng(6)
    orig = rng.integers(40, 200, (5, 36, 40, 3), dtype=np.uint8)
    recon = np.clip(orig.astype(int) + rng.integers(-20, 21, orig.shape), 0, 255).astype(np.uint8)
    meter = QualityMeter()
    meter.add(orig[:2], recon[:2])
    meter.add(orig[2:], recon[2:])
    whole, perceptual = clip_metrics(orig, recon), perceptual_metrics(orig, recon)
    s = meter.summary()
    assert s["n_frames"] == 5 and s["ssim_label"] == "SSIM"
    assert s["psnr_db"] == whole["psnr_db"] and s["ms_ssim"] == whole["ms_ssim"]
    assert s["dss"] == perceptual["dss"] and s["haarpsi"] == perceptual["haarpsi"]
    small = QualityMeter()
    small.add(orig[:, :20], recon[:, :20])
    assert small.summary()["dss"] is None and small.summary()["haarpsi"] is None
    with pytest.raises(CodecConfigError, match="no frames"):
        QualityMeter().summary()
