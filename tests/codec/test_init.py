"""Content-aware and random initialisation, ROI masks and face detection (CPU, tiny frames)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from codec.errors import CodecConfigError
from codec.fit import psnr_of
from codec.gaussians import MIN_CHOL_DIAG, Gaussians, covariance
from codec.init import detect_face_roi, load_roi_mask, random_init, superpixel_init
from codec.render import get_backend

H, W = 40, 48


def synthetic_frame(h: int = H, w: int = W) -> torch.Tensor:
    """float32 [h, w, 3]: smooth gradients, a disc and a bar (deterministic)."""
    y, x = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    r = 0.2 + 0.6 * x / w
    g = 0.3 + 0.4 * y / h
    b = 0.5 + 0.3 * torch.sin(x / 6.0) * torch.cos(y / 5.0)
    img = torch.stack([r, g, b], dim=2)
    disc = (x - 0.3 * w) ** 2 + (y - 0.6 * h) ** 2 < (0.2 * h) ** 2
    img[disc] = torch.tensor([0.9, 0.15, 0.1])
    bar = (x > 0.65 * w) & (x < 0.8 * w) & (y > 0.15 * h)
    img[bar] = torch.tensor([0.1, 0.2, 0.85])
    return img.clamp(0, 1).to(torch.float32)


def assert_valid(g: Gaussians, n: int, h: int = H, w: int = W) -> None:
    assert len(g) == n
    for t in (g.xy_px, g.chol, g.rgb):
        assert t.dtype == torch.float32
        assert torch.isfinite(t).all()
    assert (g.xy_px[:, 0] >= 0).all() and (g.xy_px[:, 0] <= w).all()
    assert (g.xy_px[:, 1] >= 0).all() and (g.xy_px[:, 1] <= h).all()
    assert (g.chol[:, 0] >= MIN_CHOL_DIAG).all() and (g.chol[:, 2] >= MIN_CHOL_DIAG).all()
    s = covariance(g.chol)
    assert (s[:, 0] * s[:, 2] - s[:, 1] ** 2 > 0).all()  # positive definite


@pytest.mark.parametrize("n", [1, 7, 30, 61, 150, 400])
def test_superpixel_init_exact_count_valid(n: int) -> None:
    g = superpixel_init(synthetic_frame(), n)
    assert_valid(g, n)


def test_superpixel_init_counts_need_both_merge_and_split() -> None:
    """The exact-count step is exercised in both directions over these counts."""
    from skimage.segmentation import slic

    from codec.init import SLIC_COMPACTNESS

    img = synthetic_frame().numpy()
    raw = {
        n: int(
            slic(
                img, n_segments=n, compactness=SLIC_COMPACTNESS, start_label=1, channel_axis=-1
            ).max()
        )
        for n in (7, 30, 61, 150, 400)
    }
    assert any(v > n for n, v in raw.items()) and any(v < n for n, v in raw.items()), raw


def test_superpixel_init_is_good_start() -> None:
    frame = synthetic_frame()
    backend = get_backend("dense")
    sp = superpixel_init(frame, 60, backend=backend)
    rnd = random_init(H, W, 60, generator=torch.Generator().manual_seed(0))
    p_sp = psnr_of(backend.render_nograd(sp, H, W), frame)
    p_rnd = psnr_of(backend.render_nograd(rnd, H, W), frame)
    assert p_sp > 16.0
    assert p_sp > p_rnd + 8.0


def test_superpixel_amplitude_reproduces_flat_colour() -> None:
    """Overlapping Gaussians sum back to the segment colour inside a uniform frame
    (up to the ripple of a lattice of kernels, about +-15% at the default sigma scale)."""
    frame = torch.full((H, W, 3), 0.5)
    frame[..., 2] = 0.8
    g = superpixel_init(frame, 120)
    img = get_backend("dense").render_nograd(g, H, W)
    rel = ((img - frame) / frame)[7:-7, 7:-7]
    assert abs(float(rel.mean())) < 0.025
    assert float(rel.abs().max()) < 0.2


def test_superpixel_init_deterministic_and_accepts_numpy() -> None:
    frame = synthetic_frame()
    a = superpixel_init(frame, 50)
    b = superpixel_init(frame.numpy(), 50)
    for x, y in ((a.xy_px, b.xy_px), (a.chol, b.chol), (a.rgb, b.rgb)):
        assert torch.equal(x, y)


def test_superpixel_init_roi_share() -> None:
    frame = synthetic_frame()
    roi = torch.zeros(H, W, dtype=torch.bool)
    roi[8:32, 4:26] = True  # a convex box: every ROI segment's centroid lies inside it
    g = superpixel_init(frame, 40, roi_mask=roi, roi_share=0.75)
    assert_valid(g, 40)
    x, y = g.xy_px[:, 0], g.xy_px[:, 1]
    inside = (x > 4) & (x < 26) & (y > 8) & (y < 32)
    assert torch.equal(inside[:30], torch.ones(30, dtype=torch.bool))  # ROI rows come first
    assert int(inside.sum()) >= 30
    # density: the ROI covers 23% of the frame but gets 75% of the Gaussians
    assert int(inside.sum()) / float(roi.float().mean()) > 2.5 * 40


def test_superpixel_init_roi_edge_cases() -> None:
    frame = synthetic_frame()
    tiny = torch.zeros(H, W, dtype=torch.bool)
    tiny[0, 0:3] = True  # 3 ROI pixels cannot take 30 Gaussians: the rest go to the background
    g = superpixel_init(frame, 40, roi_mask=tiny, roi_share=0.75)
    assert_valid(g, 40)
    full = torch.ones(H, W, dtype=torch.bool)
    assert_valid(superpixel_init(frame, 20, roi_mask=full, roi_share=0.3), 20)
    with pytest.raises(CodecConfigError, match="roi_mask"):
        superpixel_init(frame, 20, roi_mask=torch.ones(H, W + 1, dtype=torch.bool))


def test_superpixel_init_rejects_bad_arguments() -> None:
    frame = synthetic_frame(6, 5)
    assert_valid(superpixel_init(frame, 30, sigma_scale=1.0), 30, 6, 5)  # one pixel per Gaussian
    with pytest.raises(CodecConfigError):
        superpixel_init(frame, 31)
    with pytest.raises(CodecConfigError):
        superpixel_init(frame, 0)
    with pytest.raises(CodecConfigError):
        superpixel_init(torch.zeros(4, 4), 2)


def test_random_init() -> None:
    a = random_init(H, W, 100, generator=torch.Generator().manual_seed(1))
    b = random_init(H, W, 100, generator=torch.Generator().manual_seed(1))
    c = random_init(H, W, 100, generator=torch.Generator().manual_seed(2))
    assert_valid(a, 100)
    assert torch.equal(a.xy_px, b.xy_px) and torch.equal(a.rgb, b.rgb)
    assert not torch.equal(a.xy_px, c.xy_px)
    assert float(a.chol[:, 0].max()) < 1.5 and float(a.chol[:, 1].min()) >= 0.0
    with pytest.raises(CodecConfigError):
        random_init(H, W, 0)


def test_load_roi_mask(tmp_path: Path) -> None:
    mask = np.zeros((H, W), np.uint8)
    mask[10:20, 5:30] = 255
    path = tmp_path / "roi.png"
    cv2.imwrite(str(path), mask)
    got = load_roi_mask(path, H, W)
    assert got.dtype == torch.bool and torch.equal(got, torch.from_numpy(mask > 0))

    big = load_roi_mask(str(path), 2 * H, 2 * W)  # nearest-neighbour upscaling
    assert big.shape == (2 * H, 2 * W)
    assert torch.equal(big[::2, ::2], got)

    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, the alpha channel carries the mask
    rgba[..., 3] = mask
    cv2.imwrite(str(tmp_path / "alpha.png"), rgba)
    assert torch.equal(load_roi_mask(tmp_path / "alpha.png", H, W), got)


def test_load_roi_mask_errors(tmp_path: Path) -> None:
    with pytest.raises(CodecConfigError, match="does not exist"):
        load_roi_mask(tmp_path / "missing.png", H, W)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(CodecConfigError, match="not an image"):
        load_roi_mask(junk, H, W)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(CodecConfigError, match="not an image"):
        load_roi_mask(empty, H, W)


def test_detect_face_roi_none_without_face() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    assert detect_face_roi(noise) is None
    assert detect_face_roi(np.full((96, 128, 3), 128, np.uint8)) is None


def test_detect_face_roi_head_and_shoulders() -> None:
    from skimage.data import astronaut

    img = astronaut()  # 512x512, one frontal face at about rows 70..165, columns 175..270
    mask = detect_face_roi(img)
    assert mask is not None and mask.shape == img.shape[:2] and mask.dtype == np.bool_
    assert mask[115, 220]  # face centre
    assert mask[300, 220]  # shoulders/chest below the face
    assert not mask[20, 20] and not mask[500, 10]
    assert 0.05 < mask.mean() < 0.6


def test_count_follows_detail_with_a_floor() -> None:
    from codec.init import MIN_IFRAME_GAUSSIANS, count_for_detail, detail_share

    flat = np.full((64, 64, 3), 0.5, np.float32)
    noisy = np.random.default_rng(0).random((64, 64, 3), dtype=np.float32)
    half = flat.copy()
    half[:, :8] = noisy[:, :8]  # one column of blocks in eight has detail
    assert detail_share(flat) == 0.0 and detail_share(noisy) == 1.0
    assert count_for_detail(1000, flat) == MIN_IFRAME_GAUSSIANS
    assert count_for_detail(1000, noisy) == 1000
    assert count_for_detail(1000, half) == 500  # 1/8 detailed is half of the full-count share
    assert count_for_detail(5, flat) == 5  # never more than asked


def test_rd_budget_grows_with_detail_and_falls_with_lambda() -> None:
    from codec.init import MIN_IFRAME_GAUSSIANS, rd_gaussian_count

    flat = np.full((96, 128, 3), 0.4, np.float32)
    smooth = synthetic_frame(96, 128).numpy()
    yy, xx = np.mgrid[0:96, 0:128].astype(np.float32)
    pattern = 0.5 + 0.2 * np.sin(xx / 1.7) * np.cos(yy / 2.3) + 0.15 * np.sin((xx + yy) / 3.1)
    textured = np.repeat(pattern[..., None], 3, axis=2).clip(0, 1).astype(np.float32)
    counts = [rd_gaussian_count(f, 250.0, 40.0) for f in (flat, smooth, textured)]
    assert counts[0] == MIN_IFRAME_GAUSSIANS  # a flat frame: the floor
    assert counts[0] < counts[1] < counts[2]  # more detail, more Gaussians
    assert counts[2] > 10 * counts[0]
    by_lambda = [rd_gaussian_count(smooth, lam, 40.0) for lam in (2000.0, 250.0, 30.0)]
    assert by_lambda[0] < by_lambda[1] < by_lambda[2]  # a lower slope buys more Gaussians
    # white noise does not pay at this slope: a Gaussian removes less error than its bits cost
    noise = np.random.default_rng(0).normal(0.5, 0.05, (96, 128, 3)).astype(np.float32)
    assert rd_gaussian_count(noise, 250.0, 40.0) < counts[2] / 4
    half = textured.copy()
    half[:, 64:] = 0.4  # half the frame flat: about half the textured count
    assert 0.35 < rd_gaussian_count(half, 250.0, 40.0) / counts[2] < 0.65


def test_block_persistence_counts_the_frames_a_block_lives_for() -> None:
    from codec.init import BUDGET_BLOCK_PX, block_persistence

    b = BUDGET_BLOCK_PX
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (2 * b, 3 * b - 5, 3), dtype=np.uint8)  # odd width: edge blocks
    frames = np.repeat(first[None], 8, axis=0)
    frames[1:, :b, :b] = 255 - frames[1:, :b, :b]  # block (0, 0) changes at once
    frames[4:, b:, b : 2 * b] = 0  # block (1, 1) changes at frame 4 ...
    frames[6:, b:, b : 2 * b] = first[b:, b : 2 * b]  # ... and its return does not count
    p = block_persistence(frames, 16.0)
    assert p.shape == (2, 3)
    assert p[0, 1] == pytest.approx(8.0)  # static: all 8 frames
    assert p[0, 0] == pytest.approx(1.0, abs=1e-6)  # only its own frame
    assert p[1, 1] == pytest.approx(4.0, abs=1e-6)  # frames 0..3
    assert np.array_equal(p, block_persistence(frames, 16.0))  # deterministic
    # sensor noise is not change: a static picture with fresh noise every frame lives on
    noisy = np.clip(first[None] + rng.normal(0, 6, (8, *first.shape)), 0, 255).astype(np.uint8)
    assert block_persistence(noisy, 16.0).min() > 4.0  # per pixel it would score about 1


def test_rd_budget_weight_buys_detail_where_it_lives() -> None:
    from codec.init import rd_gaussian_count

    yy, xx = np.mgrid[0:96, 0:128].astype(np.float32)
    pattern = 0.5 + 0.2 * np.sin(xx / 3.7) * np.cos(yy / 4.3)
    frame = np.repeat(pattern[..., None], 3, axis=2).astype(np.float32)
    plain = rd_gaussian_count(frame, 250.0, 40.0)
    ones = np.ones((6, 8))
    assert rd_gaussian_count(frame, 250.0, 40.0, weight=ones) == plain
    assert rd_gaussian_count(frame, 250.0, 40.0, weight=8 * ones) > plain  # lives 8 frames
