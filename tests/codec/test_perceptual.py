"""codec.perceptual: DSS and HaarPSI against piq's values on fixed images, and their properties.

Reference values: piq 0.8.0 (``piq.dss.dss`` and ``piq.haarpsi.haarpsi`` with ``data_range=1.0,
reduction="none"``, x = distorted, y = reference) under torch 2.13.0+cpu, computed once on the
images ``_pairs()`` builds (the project no longer installs piq; it needs torchvision). HaarPSI
agrees to float32 rounding. DSS is 1-2e-6 below piq's: piq adds float32 eps to every
normalised subband weight (``sim * (w / sum(w) + eps)``), which the paper does not; hence the
tolerance of 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codec.errors import CodecConfigError
from codec.perceptual import HAARPSI_MIN_SIDE, dss, haarpsi

# name: (piq 0.8.0 DSS, piq 0.8.0 HaarPSI)
PIQ_0_8_0 = {
    "a_noise8": (0.9846309, 0.9424444),
    "a_noise25": (0.8614320, 0.7343216),
    "a_blur": (0.9645344, 0.9109488),
    "a_bright": (0.9951925, 0.9936023),
    "b_noise8": (0.9902176, 0.9559340),
    "b_blur": (0.9680835, 0.9319648),
    "a_vs_other": (0.1659114, 0.3220837),
    "astronaut_noise12": (0.9773756, 0.9111422),
    "astronaut_blur": (0.9571675, 0.9434357),
}


def _scene(h: int, w: int, seed: int) -> np.ndarray:
    """A synthetic u8 [h, w, 3] picture: waves, flat rectangles, mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.empty((h, w, 3))
    for c in range(3):
        img[..., c] = 110 + 50 * np.sin(xx / (4 + c) + yy / 9) * np.cos(yy / (6 + c))
    for _ in range(6):
        y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
        img[y0 : y0 + rng.integers(3, h // 2), x0 : x0 + rng.integers(3, w // 2)] = rng.integers(
            0, 256, 3
        )
    img += rng.normal(0, 6, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _noisy(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(img + rng.normal(0, sigma, img.shape)), 0, 255).astype(np.uint8)


def _blurred(img: np.ndarray) -> np.ndarray:
    """3x3 box blur, edges replicated."""
    p = np.pad(img.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    out = sum(p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _photo() -> np.ndarray:
    from skimage.data import astronaut  # bundled with scikit-image, no download

    return np.ascontiguousarray(astronaut()[40:136, 160:288])


def _pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (reference, distorted), u8 [H, W, 3] each."""
    a = _scene(48, 64, 1)
    b = _scene(37, 53, 2)  # odd sides: DSS crops to 32x48, HaarPSI pads before subsampling
    photo = _photo()
    return {
        "a_noise8": (a, _noisy(a, 8, 10)),
        "a_noise25": (a, _noisy(a, 25, 11)),
        "a_blur": (a, _blurred(a)),
        "a_bright": (a, np.clip(a.astype(int) + 20, 0, 255).astype(np.uint8)),
        "b_noise8": (b, _noisy(b, 8, 12)),
        "b_blur": (b, _blurred(b)),
        "a_vs_other": (a, _scene(48, 64, 3)),
        "astronaut_noise12": (photo, _noisy(photo, 12, 13)),
        "astronaut_blur": (photo, _blurred(photo)),
    }


def _t(img: np.ndarray) -> torch.Tensor:
    """u8 [H, W, 3] -> float32 [1, 3, H, W] in [0, 1]."""
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize("name", sorted(PIQ_0_8_0))
def test_matches_piq_reference_values(name: str) -> None:
    ref, dist = _pairs()[name]
    want_dss, want_haarpsi = PIQ_0_8_0[name]
    assert float(dss(_t(dist), _t(ref))) == pytest.approx(want_dss, abs=1e-5)
    assert float(haarpsi(_t(dist), _t(ref))) == pytest.approx(want_haarpsi, abs=2e-6)


def test_identity_is_one_and_both_are_symmetric() -> None:
    for ref, dist in _pairs().values():
        x, y = _t(dist), _t(ref)
        assert float(dss(y, y)) == pytest.approx(1.0, abs=1e-6)
        assert float(haarpsi(y, y)) == pytest.approx(1.0, abs=1e-5)
        assert float(dss(x, y)) == pytest.approx(float(dss(y, x)), abs=1e-6)
        assert float(haarpsi(x, y)) == pytest.approx(float(haarpsi(y, x)), abs=1e-6)


def test_monotone_under_growing_noise_and_in_range() -> None:
    ref = _photo()
    y = _t(ref)
    d_prev, h_prev = 1.0, 1.0
    for sigma in (2, 6, 15, 35, 80):
        x = _t(_noisy(ref, sigma, 7))
        d, h = float(dss(x, y)), float(haarpsi(x, y))
        assert 0.0 <= d < d_prev and 0.0 <= h < h_prev, sigma
        d_prev, h_prev = d, h


def test_batches_are_per_frame() -> None:
    pairs = _pairs()
    names = ["a_noise8", "a_blur", "a_vs_other"]
    x = torch.cat([_t(pairs[n][1]) for n in names])
    y = torch.cat([_t(pairs[n][0]) for n in names])
    d, h = dss(x, y), haarpsi(x, y)
    assert d.shape == h.shape == (3,)
    for i, n in enumerate(names):
        assert float(d[i]) == pytest.approx(float(dss(x[i : i + 1], y[i : i + 1])), abs=1e-6)
        assert float(h[i]) == pytest.approx(PIQ_0_8_0[n][1], abs=2e-6)


def test_flat_and_black_frames_stay_finite() -> None:
    black = torch.zeros(1, 3, 32, 32)
    grey = torch.full((1, 3, 32, 32), 0.5)
    assert float(haarpsi(black, black)) == pytest.approx(1.0)  # piq gives inf here
    assert float(dss(black, black)) == pytest.approx(1.0)
    for f in (dss, haarpsi):
        v = float(f(black, grey))
        assert np.isfinite(v) and 0.0 <= v < 1.0


def test_bad_shapes_are_refused() -> None:
    x = torch.rand(1, 3, 20, 20)
    with pytest.raises(CodecConfigError, match="equal shape"):
        dss(x, torch.rand(1, 3, 20, 21))
    with pytest.raises(CodecConfigError, match="RGB"):
        haarpsi(x[:, :1], x[:, :1])
    small = torch.rand(1, 3, HAARPSI_MIN_SIDE - 1, 40)
    with pytest.raises(CodecConfigError, match="at least 16x16"):
        haarpsi(small, small)
    with pytest.raises(CodecConfigError, match="at least 8x8"):
        dss(small[..., :7, :], small[..., :7, :])
