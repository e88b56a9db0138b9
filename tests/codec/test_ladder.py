"""The quality ladder (issue 14, item 3): one lambda per level drives every knob, and on a
synthetic clip each level costs more and looks better than the one below."""

from __future__ import annotations

import numpy as np

from codec.config import QUALITY_MAX, QUALITY_MIN, CodecConfig, ladder_rung
from codec.gop import encode_gop_report

LEVELS = range(QUALITY_MIN, QUALITY_MAX + 1)


def test_one_slope_per_level_drives_every_knob() -> None:
    rungs = [ladder_rung(q) for q in LEVELS]
    for lo, hi in zip(rungs, rungs[1:], strict=False):
        assert hi["lambda"] < lo["lambda"]
        assert hi["chol_bits"] >= lo["chol_bits"] and hi["rgb_bits"] >= lo["rgb_bits"]
        assert hi["pframe_threshold"] <= lo["pframe_threshold"]
    for q, rung in zip(LEVELS, rungs, strict=True):
        cfg = CodecConfig.preset("fast", q)
        assert cfg.fit.budget == "rd" and cfg.fit.pframe_rd_lambda == rung["lambda"]
        assert (cfg.quant.chol_bits, cfg.quant.rgb_bits) == (rung["chol_bits"], rung["rgb_bits"])


def textured_clip(t: int = 2, h: int = 48, w: int = 64) -> np.ndarray:
    """uint8 [T, H, W, 3]: a smooth background with gratings and a disc, panning 1 px per frame."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = []
    for i in range(t):
        x = xx + i
        r = 0.5 + 0.25 * np.sin(x / 3.0) * np.cos(yy / 4.0)
        g = 0.4 + 0.2 * np.sin((x + yy) / 6.0)
        b = 0.3 + 0.4 * (x / (w + t))
        img = np.stack([r, g, b], axis=-1)
        img[(x - 24) ** 2 + (yy - 22) ** 2 < 80] = (0.9, 0.2, 0.1)
        frames.append((img.clip(0, 1) * 255).round().astype(np.uint8))
    return np.stack(frames)


def test_the_ladder_climbs_in_rate_and_quality_on_a_synthetic_clip() -> None:
    frames = textured_clip()
    fast = {"gop": len(frames), "fit__iframe_iters": 200, "fit__pframe_iters": 40}
    points = []
    for q in LEVELS:
        res = encode_gop_report(frames, CodecConfig.preset("fast", q, **fast))
        points.append((len(res.payload), float(np.mean([f.psnr_db for f in res.frames]))))
    sizes, psnrs = zip(*points, strict=True)
    assert all(b > a for a, b in zip(sizes, sizes[1:], strict=False)), sizes
    assert all(b > a for a, b in zip(psnrs, psnrs[1:], strict=False)), psnrs
