"""The fused C++ ``cpu`` backend and the canonical render (codec/render/fused_cpu.py, canonical.py).

The canonical render has two implementations that must agree bit for bit: the C++ kernel and
its PyTorch emulation. The differentiable render must match the dense reference (float32
tolerances: the kernel's exp is a polynomial) forward and backward, and every result must be
independent of the thread count.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from codec.bitstream import GopHeader, pack_gop, unpack_gop
from codec.config import CodecConfig
from codec.entropy import decode_intra
from codec.errors import BitstreamError
from codec.gaussians import Gaussians
from codec.gop import RENDER_CANONICAL, decode_gop, encode_gop_report, to_u8
from codec.quant import dequantize
from codec.render import cpu_ext, get_backend, resolve_backend_name
from codec.render.canonical import det_exp, render_canonical, render_canonical_torch
from codec.render.dense import render_dense
from codec.render.fused_cpu import FusedCpuBackend
from codec.render.torch_tiles import TorchTileBackend
from tests.codec.render_helpers import grads_of, random_gaussians

if cpu_ext.load() is None:  # a machine without a compiler still runs the PyTorch fallback tests
    if shutil.which("g++") or shutil.which("c++"):
        raise RuntimeError(f"the fused CPU renderer failed to build: {cpu_ext.load_error()}")
    pytest.skip("no C++ compiler: the fused CPU renderer cannot be built", allow_module_level=True)

FUSED = FusedCpuBackend()


def one_tile_gaussians(n: int = 600) -> Gaussians:
    """``n`` small faint Gaussians all centred in tile (1, 1) of a 48x48 frame."""
    gen = torch.Generator().manual_seed(7)
    xy = 20.0 + 8.0 * torch.rand(n, 2, generator=gen)
    chol = torch.stack(
        [
            0.3 + 0.7 * torch.rand(n, generator=gen),
            0.2 * torch.randn(n, generator=gen),
            0.3 + 0.7 * torch.rand(n, generator=gen),
        ],
        dim=1,
    )
    return Gaussians(xy, chol, torch.rand(n, 3, generator=gen) / n).clamped()


def degenerate_gaussians() -> Gaussians:
    """Finite and non-finite, singular, huge and far-away Gaussians mixed with normal ones."""
    g = random_gaussians(40, 29, 31, seed=3)
    xy, chol, rgb = g.xy_px.clone(), g.chol.clone(), g.rgb.clone()
    xy[0] = torch.tensor([float("nan"), 3.0])
    chol[1] = torch.tensor([float("inf"), 0.0, 1.0])
    chol[2] = torch.tensor([0.0, 0.0, 0.0])  # singular
    chol[3] = torch.tensor([400.0, 10.0, 300.0])  # covers the frame many times over
    xy[4] = torch.tensor([1e6, -1e6])
    chol[5] = torch.tensor([1e-4, 50.0, 1e-4])  # nearly singular, long and thin
    rgb[6] = torch.tensor([-0.5, 2.0, 0.0])  # out-of-range colour is drawn as given
    return Gaussians(xy, chol, rgb)


CASES = [
    ("random", lambda: random_gaussians(300, 37, 53, seed=1), 37, 53),
    ("odd size", lambda: random_gaussians(80, 33, 17, seed=2), 33, 17),
    ("one pixel", lambda: random_gaussians(10, 1, 1, seed=4), 1, 1),
    ("> 256 on one tile", one_tile_gaussians, 48, 48),
    ("degenerate", degenerate_gaussians, 29, 31),
    ("empty", lambda: Gaussians.empty(), 20, 24),
]


@pytest.mark.parametrize(("name", "make", "height", "width"), CASES, ids=[c[0] for c in CASES])
def test_cpp_and_torch_canonical_renders_are_bit_identical(
    name: str, make: object, height: int, width: int
) -> None:
    g = make()  # type: ignore[operator]
    cpp = render_canonical(g, height, width)
    emu = render_canonical_torch(g, height, width)
    assert cpp.shape == (height, width, 3) and cpp.dtype == torch.float32
    assert torch.equal(cpp, emu)
    assert torch.isfinite(cpp).all()
    # and the differentiable forward is the same image
    assert torch.equal(FUSED.render(g, height, width).detach(), cpp)


@pytest.mark.parametrize(("name", "make", "height", "width"), CASES, ids=[c[0] for c in CASES])
def test_forward_matches_dense(name: str, make: object, height: int, width: int) -> None:
    g = make()  # type: ignore[operator]
    ok = TorchTileBackend().render_nograd(g, height, width)  # drops the degenerate rows
    ours = FUSED.render_nograd(g, height, width)
    assert torch.allclose(ours, ok, atol=2e-5, rtol=1e-5)
    if name != "degenerate":  # the dense sum has NaN from the non-finite rows
        assert torch.allclose(ours, render_dense(g, height, width), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("name", "g", "height", "width"),
    [
        ("random", random_gaussians(200, 37, 53, seed=5), 37, 53),
        ("odd size", random_gaussians(60, 19, 45, seed=6), 19, 45),
        ("> 256 on one tile", one_tile_gaussians(), 48, 48),
    ],
)
def test_backward_matches_dense(name: str, g: Gaussians, height: int, width: int) -> None:
    weight = torch.randn(height, width, 3, generator=torch.Generator().manual_seed(9))
    ours = grads_of(FUSED.render, g, height, width, weight)
    ref = grads_of(render_dense, g, height, width, weight)
    for a, b in zip(ours, ref, strict=True):
        scale = float(b.abs().max()) + 1e-6
        assert float((a - b).abs().max()) <= 2e-4 * scale
    assert ref[1].abs().max() > 0


def test_degenerate_gaussians_get_zero_gradient_without_nan() -> None:
    g = degenerate_gaussians()
    weight = torch.randn(29, 31, 3, generator=torch.Generator().manual_seed(2))
    out, g_xy, g_chol, g_rgb = grads_of(FUSED.render, g, 29, 31, weight)
    for t in (out, g_xy, g_chol, g_rgb):
        assert torch.isfinite(t).all()
    assert float(g_xy[:3].abs().sum() + g_chol[:3].abs().sum() + g_rgb[:3].abs().sum()) == 0.0


def test_results_do_not_depend_on_the_thread_count() -> None:
    g = random_gaussians(2000, 96, 80, seed=11)
    weight = torch.randn(96, 80, 3, generator=torch.Generator().manual_seed(3))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = grads_of(FUSED.render, g, 96, 80, weight)
        torch.set_num_threads(2)
        two = grads_of(FUSED.render, g, 96, 80, weight)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)


def test_det_exp_is_close_to_exp_over_the_kernel_range() -> None:
    h = torch.linspace(-4.5, 0.0, 100_001)
    rel = ((det_exp(h) - torch.exp(h.double()).float()) / torch.exp(h)).abs()
    assert float(rel.max()) < 3e-7


def test_auto_picks_the_fused_backend_on_cpu() -> None:
    assert resolve_backend_name("auto", "cpu") == "cpu"
    assert resolve_backend_name("auto", "cuda") == "patch"
    assert get_backend("auto").name == "cpu"
    with pytest.raises(ValueError, match="CPU tensors"):
        FUSED.render(Gaussians.empty("meta"), 4, 4)


def _clip(seed: int = 0) -> np.ndarray:
    """5 frames of a moving smooth pattern, 36x44 (odd tile counts)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:36, 0:44].astype(np.float32)
    frames = []
    for t in range(5):
        img = np.stack(
            [
                0.5 + 0.4 * np.sin((xx + 2 * t) / 5.0),
                0.5 + 0.4 * np.cos((yy - t) / 7.0),
                0.5 + 0.3 * np.sin((xx + yy + 3 * t) / 9.0),
            ],
            axis=-1,
        )
        frames.append(np.clip(img * 255 + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8))
    return np.stack(frames)


@pytest.mark.parametrize("backend", ["cpu", "patch"])
def test_decode_is_bit_exact_to_the_recon_for_each_fitting_backend(backend: str) -> None:
    cfg = CodecConfig.preset(
        "fast", 4, gop=5, backend=backend, fit__iframe_iters=60, fit__pframe_iters=10
    )
    res = encode_gop_report(_clip(), cfg)
    header, _ = unpack_gop(res.payload)
    assert header.flags & RENDER_CANONICAL
    assert np.array_equal(decode_gop(res.payload), res.recon)


@pytest.fixture(scope="module")
def small_gop() -> tuple[bytes, np.ndarray]:
    """(payload, recon) of a short 3-frame GOP, encoded once for the tests below."""
    res = encode_gop_report(_clip()[:3], CodecConfig.preset("fast", 3, gop=3, fit__iframe_iters=40))
    return res.payload, res.recon


def _with_flags(payload: bytes, flags: int) -> bytes:
    header, coded = unpack_gop(payload)
    return pack_gop(
        GopHeader(header.height, header.width, header.n_frames, header.grid, flags), coded
    )


def test_decode_without_the_extension_uses_the_emulation_bit_exactly(
    monkeypatch: pytest.MonkeyPatch, small_gop: tuple[bytes, np.ndarray]
) -> None:
    payload, recon = small_gop
    monkeypatch.setattr(cpu_ext, "load", lambda verbose=False: None)
    assert np.array_equal(decode_gop(payload), recon)


def test_gops_without_the_flag_decode_with_the_legacy_renderer(
    small_gop: tuple[bytes, np.ndarray],
) -> None:
    out = decode_gop(_with_flags(small_gop[0], 0))
    header, coded = unpack_gop(small_gop[0])
    first = dequantize(decode_intra(coded[0][1], header.grid), header.grid)
    expect = to_u8(TorchTileBackend().render_nograd(first, header.height, header.width))
    assert np.array_equal(out[0], expect)


def test_unknown_gop_flags_are_refused(small_gop: tuple[bytes, np.ndarray]) -> None:
    with pytest.raises(BitstreamError, match="flags"):
        decode_gop(_with_flags(small_gop[0], 0x80))


def test_a_scene_cut_keeps_the_first_grid_in_the_gop_header() -> None:
    """Regression: the header carried the scene cut's grid, so the frames before the cut decoded
    against the wrong quantiser (up to 77 levels off on this clip)."""
    cfg = CodecConfig.preset("fast", 4, gop=5, fit__iframe_iters=60, fit__pframe_iters=10)
    clip = _clip()
    clip[2:] = 255 - clip[2:, ::-1]  # a real cut (the test once relied on a weak fit to get one)
    res = encode_gop_report(clip, cfg)
    assert [f.kind for f in res.frames].count("I") >= 2  # the clip has a scene cut
    assert np.array_equal(decode_gop(res.payload), res.recon)


@pytest.mark.parametrize(("name", "make", "height", "width"), CASES, ids=[c[0] for c in CASES])
def test_cpp_pixel_boxes_equal_the_torch_ones(
    name: str, make: object, height: int, width: int
) -> None:
    from codec.render.canonical import drawable_boxes
    from codec.render.torch_tiles import pixel_boxes

    g = make()  # type: ignore[operator]
    ext = cpu_ext.load()
    assert ext is not None
    for a, b in zip(
        drawable_boxes(ext, g, height, width), pixel_boxes(g, height, width), strict=True
    ):
        assert torch.equal(a, b)


def test_a_stale_torch_build_lock_does_not_hang_the_next_process() -> None:
    """A build killed midway leaves torch's ``lock`` file; the next process must not wait on it."""
    import subprocess
    import sys

    lock = cpu_ext.build_dir() / "lock"
    lock.touch()
    code = "from codec.render import cpu_ext; assert cpu_ext.load() is not None"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=240)
    assert not lock.exists()


@pytest.mark.parametrize("seed", range(6))
def test_gaussians_touching_matches_the_tile_backend(seed: int) -> None:
    """The C++ touching test picks the rows the PyTorch tile backend picks (odd sizes, Gaussians
    half outside the frame, sparse and empty masks)."""
    gen = torch.Generator().manual_seed(seed)
    h, w, n = 37 + 5 * seed, 53 + 7 * seed, 300
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([w + 10.0, h + 10.0]) - 5.0
    chol = torch.stack(
        [
            0.2 + 4 * torch.rand(n, generator=gen),
            torch.randn(n, generator=gen),
            0.2 + 4 * torch.rand(n, generator=gen),
        ],
        dim=1,
    )
    g = Gaussians(xy, chol, torch.rand(n, 3, generator=gen))
    fused, tiles = FusedCpuBackend(), TorchTileBackend()
    for density in (0.0, 0.03, 0.5):
        mask = torch.rand(h, w, generator=gen) < density
        got = fused.gaussians_touching(g, mask)
        assert torch.equal(got, tiles.gaussians_touching(g, mask))
        assert got.dtype == torch.int64 and bool((got[1:] > got[:-1]).all())
