"""The codec CLI through main(argv): encode, info, decode; GOP boundaries; clear errors."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from codec.api import decode_video, encode_video, iter_decoded
from codec.cli import main
from codec.config import CodecConfig
from codec.container import ContainerReader
from codec.video import iter_frames
from tests.codec.test_gop import moving_blob_frames

FAST_ARGS = ["--quality", "4", "--iters", "30", "--p-iters", "8", "--quiet"]


def write_clip(path: Path, frames: np.ndarray, fps: Fraction = Fraction(30000, 1001)) -> Path:
    """A lossless-ish H.264 clip of `frames` (uint8 [T, H, W, 3]) written with PyAV."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "0", "preset": "ultrafast"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture()
def clip(tmp_path: Path) -> Path:
    return write_clip(tmp_path / "clip.mp4", moving_blob_frames(t=5, h=24, w=32))


def test_encode_info_decode(clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gsv = tmp_path / "clip.gsv"
    assert main(["encode", str(clip), "-o", str(gsv), "--gop", "2", *FAST_ARGS]) == 0
    assert "bpp" in capsys.readouterr().out
    # GOP boundaries: 5 frames with GOP 2 -> GOPs of 2, 2, 1
    reader = ContainerReader(gsv)
    assert [(g.first_frame, g.n_frames) for g in reader.gops] == [(0, 2), (2, 2), (4, 1)]
    assert reader.header.fps_num == 30000 and reader.header.fps_den == 1001

    assert main(["info", str(gsv), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["frames"] == 5 and len(info["gops"]) == 3

    out_dir = tmp_path / "frames"
    assert main(["decode", str(gsv), "-o", str(out_dir)]) == 0
    assert len(list(out_dir.glob("*.png"))) == 5

    y4m = tmp_path / "out.y4m"
    assert main(["decode", str(gsv), "-o", str(y4m)]) == 0
    decoded = np.stack(list(iter_frames(y4m)))
    np.testing.assert_array_equal(decoded, np.stack(list(iter_decoded(gsv))))


def test_random_access_from_any_gop(clip: Path, tmp_path: Path) -> None:
    gsv = tmp_path / "c.gsv"
    cfg = CodecConfig.preset("fast", 4, gop=2, fit__iframe_iters=30, fit__pframe_iters=8)
    encode_video(clip, gsv, cfg)
    everything = list(iter_decoded(gsv))
    tail = list(iter_decoded(gsv, start_frame=3))
    assert len(everything) == 5 and len(tail) == 2
    for a, b in zip(everything[3:], tail, strict=True):
        np.testing.assert_array_equal(a, b)
    assert decode_video(gsv, tmp_path / "v.mp4") == 5


def test_one_frame_video(tmp_path: Path) -> None:
    clip1 = write_clip(tmp_path / "one.mp4", moving_blob_frames(t=1, h=15, w=21))
    gsv = tmp_path / "one.gsv"
    summary = encode_video(clip1, gsv, CodecConfig.preset("fast", 4, fit__iframe_iters=30))
    assert summary.n_frames == 1 and summary.n_gops == 1 and summary.p_frame_bytes_mean is None
    assert ContainerReader(gsv).n_frames == 1


def test_user_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_video = tmp_path / "notes.txt"
    not_video.write_text("hello")
    assert main(["encode", str(not_video), "-o", str(tmp_path / "x.gsv"), "--quiet"]) == 2
    assert "error:" in capsys.readouterr().err
    garbage = tmp_path / "bad.gsv"
    garbage.write_bytes(b"GSV" + bytes(100))
    assert main(["info", str(garbage)]) == 2
    assert main(["decode", str(garbage), "-o", str(tmp_path / "o.mp4")]) == 2
    assert main(["encode", str(not_video), "-o", str(tmp_path / "x.gsv"), "--quality", "11"]) == 2
    for bad in ("fit__nope=1", "no_equals", "fit__pframe_rd_lambda=-5"):
        assert main(["encode", str(not_video), "-o", str(tmp_path / "x.gsv"), "--set", bad]) == 2
        assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "x.gsv").exists()


def test_set_reaches_any_config_field() -> None:
    from codec.cli import _config_from_args, build_parser

    args = build_parser().parse_args(
        ["encode", "in.mp4", "-o", "o.gsv", "--quality", "4", "--set", "fit__pframe_rd_lambda=670"]
        + ["--set", "quant__rgb_bits=7", "--set", "fit__densify=true"]
    )
    cfg = _config_from_args(args)
    assert cfg.fit.pframe_rd_lambda == 670 and cfg.quant.rgb_bits == 7 and cfg.fit.densify is True


def test_encode_with_roi_mask_file_and_face_detection(clip: Path, tmp_path: Path) -> None:
    import cv2

    mask = np.zeros((24, 32), dtype=np.uint8)
    mask[4:20, 4:16] = 255
    mask_path = tmp_path / "roi.png"
    cv2.imwrite(str(mask_path), mask)
    for roi in (str(mask_path), "face"):  # the synthetic clip has no face: detection finds none
        gsv = tmp_path / f"roi-{roi == 'face'}.gsv"
        assert (
            main(["encode", str(clip), "-o", str(gsv), "--gop", "5", "--roi", roi, *FAST_ARGS]) == 0
        )
        assert ContainerReader(gsv).n_frames == 5
    bad = tmp_path / "missing.png"
    assert (
        main(["encode", str(clip), "-o", str(tmp_path / "x.gsv"), "--roi", str(bad), *FAST_ARGS])
        == 2
    )
