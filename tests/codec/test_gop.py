"""GOP round trips: decoder output equals the encoder's reconstruction, determinism, P-frame economy."""

from __future__ import annotations

import numpy as np
import pytest

from codec.config import CodecConfig
from codec.errors import BitstreamError, CodecConfigError
from codec.gop import decode_gop, encode_gop, encode_gop_report


def moving_blob_frames(t: int = 4, h: int = 24, w: int = 32, step: int = 2) -> np.ndarray:
    """uint8 [T, H, W, 3]: a smooth background with a bright disc moving right by `step` px per frame."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = []
    for i in range(t):
        bg = np.stack([xx / w, yy / h, 0.5 * np.ones_like(xx)], axis=-1) * 180 + 30
        cx, cy = 8 + step * i, h / 2
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < 16
        bg[disc] = [240, 60, 40]
        frames.append(bg.clip(0, 255).astype(np.uint8))
    return np.stack(frames)


def tiny_config(**overrides: object) -> CodecConfig:
    base: dict[str, object] = {"gop": 4, "fit__iframe_iters": 40, "fit__pframe_iters": 15}
    base.update(overrides)
    return CodecConfig.preset("fast", quality=5, **base)


def test_round_trip_decoder_equals_encoder_reconstruction() -> None:
    frames = moving_blob_frames()
    result = encode_gop_report(frames, tiny_config())
    decoded = decode_gop(result.payload)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, result.recon)
    assert [f.kind for f in result.frames] == ["I", "P", "P", "P"]
    # the fit is meaningful: well above a flat grey frame's PSNR
    assert min(f.psnr_db for f in result.frames) > 18.0


def test_refined_p_frame_grid_round_trips() -> None:
    frames = moving_blob_frames()
    cfg = tiny_config(quant__pframe_xy_refine=2, quant__pframe_attr_refine=1)
    result = encode_gop_report(frames, cfg)
    np.testing.assert_array_equal(decode_gop(result.payload), result.recon)
    assert sum(f.n_updated for f in result.frames[1:]) > 0  # the P-frames did send fine updates


def test_deterministic_same_bytes_twice() -> None:
    frames = moving_blob_frames(t=3)
    cfg = tiny_config(seed=7)
    assert encode_gop(frames, cfg) == encode_gop(frames, cfg)


def test_static_p_frames_cost_almost_nothing() -> None:
    frames = np.repeat(moving_blob_frames(t=1), 4, axis=0)
    result = encode_gop_report(frames, tiny_config())
    i_bytes = result.frames[0].n_bytes
    for p in result.frames[1:]:
        assert p.n_updated == 0 and p.n_added == 0
        assert p.n_bytes <= 16 < i_bytes


def test_one_frame_and_odd_size() -> None:
    frames = moving_blob_frames(t=1, h=17, w=23)
    result = encode_gop_report(frames, tiny_config())
    np.testing.assert_array_equal(decode_gop(result.payload), result.recon)
    assert result.recon.shape == (1, 17, 23, 3)


def test_qat_mode_round_trips() -> None:
    frames = moving_blob_frames(t=2)
    result = encode_gop_report(frames, tiny_config(quant__mode="qat"))
    np.testing.assert_array_equal(decode_gop(result.payload), result.recon)


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((2, 8, 8), dtype=np.uint8),
        np.zeros((2, 8, 8, 3), dtype=np.float32),
        np.zeros((0, 8, 8, 3), dtype=np.uint8),
    ],
)
def test_bad_frames_are_rejected_clearly(frames: np.ndarray) -> None:
    with pytest.raises(CodecConfigError):
        encode_gop(frames, tiny_config())


def test_garbage_payload_raises_bitstream_error() -> None:
    payload = encode_gop(moving_blob_frames(t=2), tiny_config())
    rng = np.random.default_rng(0)
    for cut in (0, 1, 5, len(payload) // 2, len(payload) - 1):
        with pytest.raises(BitstreamError):
            decode_gop(payload[:cut])
    for _ in range(20):
        with pytest.raises(BitstreamError):
            decode_gop(bytes(rng.integers(0, 256, size=64, dtype=np.uint8)))


def test_scene_cut_inside_a_gop_becomes_an_i_frame() -> None:
    """A GOP that starts black and cuts to a scene: the cut is coded as an I-frame with its own
    quantisation grid, and the scene is reproduced (not clamped to the black frame's ranges)."""
    scene = moving_blob_frames(t=3)
    frames = np.concatenate([np.zeros_like(scene[:1]), scene])
    result = encode_gop_report(frames, tiny_config())
    assert [f.kind for f in result.frames] == ["I", "I", "P", "P"]
    assert min(f.psnr_db for f in result.frames[1:]) > 18.0
    np.testing.assert_array_equal(decode_gop(result.payload), result.recon)
    without = encode_gop_report(frames, tiny_config(fit__scene_cut_psnr_db=0.0))
    assert [f.kind for f in without.frames] == ["I", "P", "P", "P"]


def test_device_choice() -> None:
    import torch

    from codec.gop import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "meta", "not a device"):
        with pytest.raises(CodecConfigError):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(CodecConfigError, match="no CUDA device"):
            encode_gop(moving_blob_frames(t=1), tiny_config(), device="cuda")


def test_cuda_fit_decodes_to_its_reconstruction() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    frames = moving_blob_frames()
    result = encode_gop_report(frames, tiny_config(), device="cuda")
    np.testing.assert_array_equal(decode_gop(result.payload), result.recon)
    cpu = encode_gop_report(frames, tiny_config())
    # a different device may pick different bits, not a different quality
    assert (
        abs(np.mean([f.psnr_db for f in result.frames]) - np.mean([f.psnr_db for f in cpu.frames]))
        < 1.0
    )
