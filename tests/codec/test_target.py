"""Target-quality mode (codec/target.py): the search lands in the band, an unreachable target
is reported (not an error) through the API and the CLI, absurd targets are refused, and the
bytes are deterministic."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from codec.api import encode_video
from codec.cli import main
from codec.config import CodecConfig
from codec.errors import CodecConfigError
from codec.gop import decode_gop
from codec.target import (
    BAND_DB,
    Trial,
    config_at_quality,
    encode_gop_target,
    measure,
    msssim_db,
    next_quality,
    summarize,
)
from tests.codec.test_cli import write_clip


def textured_frames(t: int = 4, h: int = 48, w: int = 64) -> np.ndarray:
    """uint8 [T, H, W, 3]: stripes under 24 coloured blobs drifting right 1 px per frame; enough
    detail that quality climbs with the level (28 dB at q1 to 36.8 at q8 with short fits)."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = rng.uniform(0, w, 24), rng.uniform(0, h, 24)
    size, colour = rng.uniform(2, 6, 24), rng.uniform(0, 255, (24, 3))
    frames = []
    for i in range(t):
        img = np.full((h, w, 3), 90.0, np.float32) + 60 * np.sin(xx / 7.0)[..., None]
        for k in range(24):
            g = np.exp(-((xx - cx[k] - i) ** 2 + (yy - cy[k]) ** 2) / (2 * size[k] ** 2))
            img = img * (1 - g[..., None]) + colour[k] * g[..., None]
        frames.append(img.clip(0, 255).astype(np.uint8))
    return np.stack(frames)


def short_config(**overrides: object) -> CodecConfig:
    """The fast preset with short fits (pinned: the search varies the ladder, not these)."""
    base: dict[str, object] = {"gop": 4, "fit__iframe_iters": 60, "fit__pframe_iters": 15}
    return CodecConfig.preset("fast", 5, **{**base, **overrides})


# ------------------------------------------------------------------ the config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"target_psnr": math.nan}, "target_psnr=nan is not a finite number"),
        ({"target_psnr": math.inf}, "target_psnr=inf is not a finite number"),
        ({"target_psnr": -3.0}, "target_psnr=-3.0 is out of range; use a PSNR in dB"),
        ({"target_psnr": 1000.0}, "target_psnr=1000.0 is out of range; use a PSNR in dB"),
        ({"target_psnr": "38"}, "target_psnr='38' is not a number"),
        ({"target_psnr": True}, "target_psnr=True is not a number"),
        ({"target_msssim": 1.0}, "target_msssim=1.0 is out of range; use an MS-SSIM value"),
        ({"target_msssim": math.nan}, "target_msssim=nan is not a finite number"),
        ({"target_psnr": 38.0, "target_msssim": 0.95}, "both set; ask for one"),
        ({"target_psnr": 38.0, "target_max_trials": 0}, "target_max_trials=0 is out of range"),
        ({"target_psnr": 38.0, "target_max_trials": 13}, "target_max_trials=13 is out of range"),
    ],
)
def test_absurd_targets_are_refused_with_the_field_and_range(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(CodecConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        CodecConfig.preset("fast", 5, **overrides)


def test_a_target_survives_the_compact_form_the_stream_header_carries() -> None:
    cfg = CodecConfig.preset("slow", 3, target_msssim=0.97, target_max_trials=4)
    assert CodecConfig.from_dict(cfg.to_compact()) == cfg
    assert CodecConfig.from_dict(cfg.to_dict()) == cfg


def test_fractional_quality_interpolates_the_ladder_and_keeps_user_settings() -> None:
    cfg = short_config(target_psnr=35.0, seed=3)
    for q in (1, 4, 10):  # an integer level is exactly the preset, with the user's settings
        expected = CodecConfig.preset(
            "fast", q, gop=4, seed=3, fit__iframe_iters=60, fit__pframe_iters=15
        )
        assert config_at_quality(cfg, float(q)) == expected
    lo, mid, hi = (config_at_quality(cfg, q) for q in (4.0, 4.5, 5.0))
    assert lo.fit.gaussians_per_kpx < mid.fit.gaussians_per_kpx < hi.fit.gaussians_per_kpx
    assert lo.fit.pframe_rd_lambda > mid.fit.pframe_rd_lambda > hi.fit.pframe_rd_lambda
    assert mid.quant.chol_bits in (lo.quant.chol_bits, hi.quant.chol_bits)
    assert (mid.fit.iframe_iters, mid.gop, mid.seed) == (60, 4, 3)  # pinned by the user
    assert mid.target_psnr is None  # trial encodes are plain encodes
    with pytest.raises(ValueError, match="outside"):
        config_at_quality(cfg, 10.5)


def test_the_next_trial_stays_inside_a_bracket_and_stops_at_the_limits() -> None:
    def trial(q: float, db: float) -> Trial:
        return Trial(q, db, db, 100, 0.0)

    q = next_quality([trial(5.0, 30.0), trial(7.0, 34.0)], target_db=32.0)
    assert q is not None and 5.0 < q < 7.0
    # below the target at the top level: nothing left to try (unreachable)
    assert next_quality([trial(10.0, 30.0)], target_db=32.0) is None
    # above the band at the bottom level: nothing lower to try
    assert next_quality([trial(1.0, 40.0)], target_db=32.0) is None
    # one side only: extrapolates towards the band, within the limits
    up = next_quality([trial(5.0, 30.0)], target_db=32.0)
    down = next_quality([trial(5.0, 36.0)], target_db=32.0)
    assert up is not None and 5.0 < up <= 10.0
    assert down is not None and 1.0 <= down < 5.0
    # a step in the ladder (bracket narrower than the quality resolution): stop
    assert next_quality([trial(5.0, 30.0), trial(5.02, 34.0)], target_db=32.0) is None


# ------------------------------------------------------------------ the search


def test_psnr_target_lands_in_the_band_deterministically_from_a_trial() -> None:
    frames = textured_frames()
    cfg = short_config(target_psnr=33.5)
    result, report = encode_gop_target(frames, cfg)
    assert report is not None and report.status == "in_band", report
    assert 33.5 <= report.reached <= 33.5 + BAND_DB
    assert 1 <= len(report.trials) <= cfg.target_max_trials
    # the payload is the chosen trial's: the decoder's output measures what the report says
    decoded = decode_gop(result.payload)
    assert measure("psnr", frames, decoded)[0] == pytest.approx(report.reached, abs=1e-9)
    chosen = [t for t in report.trials if t.quality == report.quality]
    assert chosen and chosen[0].n_bytes == len(result.payload)
    # lowest rate: no trial that reached the target has fewer bytes
    assert all(t.n_bytes >= len(result.payload) for t in report.trials if t.value >= 33.5)
    # deterministic: same frames and target, same search, same bytes
    again, report2 = encode_gop_target(frames, cfg)
    assert again.payload == result.payload
    assert report2 is not None and [t.quality for t in report2.trials] == [
        t.quality for t in report.trials
    ]


def test_msssim_target_lands_in_its_band() -> None:
    frames = textured_frames()
    cfg = short_config(target_msssim=0.955)
    _, report = encode_gop_target(frames, cfg)
    assert report is not None and report.metric == "msssim"
    assert report.label == "SSIM"  # 48x64 frames are below MS-SSIM's minimum: named honestly
    assert report.band[0] == 0.955 and report.band[1] > 0.955
    lo, hi = msssim_db(0.955), msssim_db(0.955) + BAND_DB
    in_band = [t for t in report.trials if lo <= t.value_db <= hi]
    assert in_band, report  # the search found the band
    if report.status == "above_band":  # rate is not monotone between close levels: a cheaper
        chosen = [t for t in report.trials if t.quality == report.quality]  # trial above it wins
        assert chosen and chosen[0].n_bytes < min(t.n_bytes for t in in_band), report
    else:
        assert report.status == "in_band", report
        assert lo <= msssim_db(report.reached) <= hi


def test_unreachable_target_is_reported_by_the_api_not_raised(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.mp4", textured_frames(t=6))
    gsv = tmp_path / "out.gsv"
    summary = encode_video(clip, gsv, short_config(gop=3, target_psnr=90.0), workers=1, threads=1)
    assert gsv.is_file() and summary.n_gops == 2
    assert summary.target is not None
    assert summary.target["gops_unreachable"] == 2 and summary.target["gops_in_band"] == 0
    assert summary.target["hit_rate"] == 0.0
    for gop in summary.target_gops:
        assert gop["status"] == "unreachable"
        assert max(t["quality"] for t in gop["trials"]) == 10.0  # the top level was tried
        assert gop["reached"] < 90.0
    assert summary.target["trial_encodes"] == sum(len(g["trials"]) for g in summary.target_gops)
    assert summarize([]) is None


def test_cli_target_prints_the_hit_rate_and_an_unreachable_target_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = write_clip(tmp_path / "clip.mp4", textured_frames(t=4))
    args = ["--gop", "4", "--iters", "60", "--p-iters", "15", "--quiet", "--threads", "1"]
    gsv, js = tmp_path / "a.gsv", tmp_path / "a.json"
    assert main(["encode", str(clip), "-o", str(gsv), "--target-psnr", "33.5", "--json", str(js), *args]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "target PSNR 33.50 dB: 1/1 GOPs in [33.50, 34.00] dB" in out
    report = json.loads(js.read_text())
    assert report["target"]["hit_rate"] == 1.0 and report["target_gops"][0]["status"] == "in_band"
    assert main(["encode", str(clip), "-o", str(tmp_path / "b.gsv"), "--target-psnr", "90", *args]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "target 90.00 dB not reachable within the quality limits" in out
    assert main(["decode", str(tmp_path / "b.gsv"), "-o", str(tmp_path / "b.y4m")]) == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--target-psnr", "nan"], "--target-psnr: target_psnr=nan is not a finite number"),
        (["--target-psnr", "1000"], "--target-psnr: target_psnr=1000.0 is out of range"),
        (["--target-msssim", "-1"], "--target-msssim: target_msssim=-1.0 is out of range"),
        (["--target-psnr", "30", "--target-trials", "50"], "--target-trials: target_max_trials"),
        (["--target-psnr", "30", "--target-msssim", "0.9"], "give one of them"),
    ],
)
def test_cli_refuses_absurd_targets_before_encoding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    clip = write_clip(tmp_path / "clip.mp4", textured_frames(t=2))
    assert main(["encode", str(clip), "-o", str(tmp_path / "x.gsv"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.gsv").exists()
