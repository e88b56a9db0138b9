"""codec.video: reading any input to RGB frames, writing mp4/y4m/PNG, and clean input errors."""

from __future__ import annotations

import contextlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from codec import video
from codec.errors import CodecConfigError, VideoInputError
from codec.metrics import psnr_db
from codec.video import VideoWriter, count_frames, iter_frames, iter_gops, probe, read_frames

NTSC = Fraction(30000, 1001)


def moving_frames(t: int, h: int, w: int) -> np.ndarray:
    """Smooth coloured gradients drifting over time: uint8 [T, H, W, 3]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty((t, h, w, 3), dtype=np.uint8)
    for i in range(t):
        out[i, ..., 0] = 128 + 100 * np.sin((xx + 2 * i) / 7.0)
        out[i, ..., 1] = 128 + 100 * np.cos((yy - i) / 5.0)
        out[i, ..., 2] = 128 + 80 * np.sin((xx + yy) / 9.0 + i / 3.0)
    return out


def write_h264(path: Path, frames: np.ndarray, fps: Fraction, **options: str) -> None:
    """An H.264 mp4 written with plain PyAV (independent of VideoWriter)."""
    t, h, w = frames.shape[:3]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "18", **options}
        for i in range(t):
            vf = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            vf.pts = i
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def write_all(path: Path, frames: np.ndarray, fps: Fraction = NTSC, **kw: str) -> None:
    with VideoWriter(path, frames.shape[2], frames.shape[1], fps, **kw) as w:  # type: ignore[arg-type]
        for f in frames:
            w.write(f)


# --------------------------------------------------------------------------- writing / round trips


def test_y4m_odd_size_round_trip_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    frames = rng.integers(
        0, 256, (4, 23, 37, 3), dtype=np.uint8
    )  # noise: every colour detail matters
    path = tmp_path / "clip.y4m"
    write_all(path, frames)

    header = b"YUV4MPEG2 W37 H23 F30000:1001 Ip A1:1 C444p10 XCOLORRANGE=FULL\n"
    data = path.read_bytes()
    assert data.startswith(header)
    assert len(data) == len(header) + 4 * (len(b"FRAME\n") + 37 * 23 * 3 * 2)

    back = np.stack(list(iter_frames(path)))
    assert back.shape == frames.shape
    assert np.array_equal(back, frames)
    info = probe(path)
    assert (info.width, info.height) == (37, 23)
    assert info.fps == NTSC and isinstance(info.fps, Fraction)
    assert count_frames(path) == 4


def test_y4m_444p10_is_exact_for_the_whole_colour_cube(tmp_path: Path) -> None:
    levels = np.arange(0, 256, 5, dtype=np.uint8)  # 52 levels per channel incl. 0 and 255
    cube = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    frame = np.zeros((52 * 26, 108, 3), dtype=np.uint8)  # 140608 pixels = 52**3 + padding
    frame.reshape(-1, 3)[: len(cube)] = cube
    path = tmp_path / "cube.y4m"
    write_all(path, frame[None])
    assert np.array_equal(next(iter_frames(path)), frame)


def test_y4m_8bit_formats_are_close(tmp_path: Path) -> None:
    frames = moving_frames(3, 23, 37)
    write_all(tmp_path / "a.y4m", frames, y4m_format="444")
    back = np.stack(list(iter_frames(tmp_path / "a.y4m")))
    assert np.abs(back.astype(int) - frames).max() <= 1

    write_all(tmp_path / "b.y4m", frames, y4m_format="420")
    assert (
        (tmp_path / "b.y4m")
        .read_bytes()
        .startswith(b"YUV4MPEG2 W37 H23 F30000:1001 Ip A1:1 C420jpeg XCOLORRANGE=LIMITED\n")
    )
    back = np.stack(list(iter_frames(tmp_path / "b.y4m")))
    assert back.shape == frames.shape  # odd size kept, chroma planes are ceil(W/2) x ceil(H/2)
    assert min(psnr_db(a, b) for a, b in zip(frames, back, strict=True)) > 30


def test_mp4_odd_size_round_trip_is_close_and_keeps_the_rational_rate(tmp_path: Path) -> None:
    frames = moving_frames(5, 23, 37)
    path = tmp_path / "clip.mp4"
    write_all(path, frames)
    info = probe(path)
    assert (info.width, info.height, info.n_frames, info.codec_name) == (37, 23, 5, "h264")
    assert info.fps == NTSC
    back = np.stack(list(iter_frames(path)))
    assert back.shape == frames.shape
    assert min(psnr_db(a, b) for a, b in zip(frames, back, strict=True)) > 35
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv444p"


def test_mp4_even_size_uses_420(tmp_path: Path) -> None:
    frames = moving_frames(3, 48, 64)
    path = tmp_path / "clip.mp4"
    write_all(path, frames, Fraction(24))
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
    back = np.stack(list(iter_frames(path)))
    # against the frames after 4:2:0 conversion alone (chroma subsampling costs this content ~18 dB)
    sub = [av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p") for f in frames]
    ref = [f.to_ndarray(format="rgb24") for f in sub]
    assert min(psnr_db(a, b) for a, b in zip(ref, back, strict=True)) > 37
    assert probe(path).fps == 24


def test_png_directory_round_trip_is_exact(tmp_path: Path) -> None:
    frames = moving_frames(3, 23, 37)
    out = tmp_path / "frames"
    write_all(out, frames)
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert np.array_equal(np.stack(list(iter_frames(out))), frames)
    with pytest.raises(CodecConfigError, match="already holds"):
        VideoWriter(out, 37, 23, NTSC)


def test_writer_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(CodecConfigError, match="unknown output type"):
        VideoWriter(tmp_path / "x.avi", 8, 8, NTSC)
    with pytest.raises(CodecConfigError):
        VideoWriter(tmp_path / "x.y4m", 0, 8, NTSC)
    w = VideoWriter(tmp_path / "x.y4m", 8, 6, NTSC)
    with pytest.raises(CodecConfigError, match="uint8 frames of shape"):
        w.write(np.zeros((8, 6, 3), np.uint8))
    with pytest.raises(CodecConfigError):
        w.write(np.zeros((6, 8, 3), np.float32))
    w.close()
    w.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        w.write(np.zeros((6, 8, 3), np.uint8))


# --------------------------------------------------------------------------- reading


def test_iter_gops_boundaries_and_max_frames(tmp_path: Path) -> None:
    frames = moving_frames(11, 16, 20)
    path = tmp_path / "c.y4m"
    write_all(path, frames)
    gops = list(iter_gops(path, 4))
    assert [(f, g.shape[0]) for f, g in gops] == [(0, 4), (4, 4), (8, 3)]
    assert np.array_equal(np.concatenate([g for _, g in gops]), frames)
    assert gops[0][1] is not gops[1][1]  # each GOP is its own array
    assert [(f, g.shape[0]) for f, g in iter_gops(path, 4, max_frames=6)] == [(0, 4), (4, 2)]
    assert [(f, g.shape[0]) for f, g in iter_gops(path, 50)] == [(0, 11)]
    assert [(f, g.shape[0]) for f, g in iter_gops(path, 1, max_frames=2)] == [(0, 1), (1, 1)]
    with pytest.raises(CodecConfigError):
        list(iter_gops(path, 0))
    assert len(list(iter_frames(path, max_frames=3))) == 3


@pytest.mark.parametrize("suffix", [".mp4", ".y4m"])
def test_one_frame_video(tmp_path: Path, suffix: str) -> None:
    frames = moving_frames(1, 16, 24)
    path = tmp_path / f"one{suffix}"
    write_all(path, frames)
    assert len(list(iter_frames(path))) == 1
    assert [(f, g.shape) for f, g in iter_gops(path, 8)] == [(0, (1, 16, 24, 3))]
    assert read_frames(path, 0, 5).shape == (1, 16, 24, 3)
    assert count_frames(path) == 1
    with pytest.raises(VideoInputError, match="past the end"):
        read_frames(path, 1, 1)


def test_read_frames_equals_slices_of_iter_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gop5.mp4"
    # short closed and open GOPs with B-frames: decode order != display order
    write_h264(
        path, moving_frames(23, 32, 48), NTSC, g="5", bf="2", **{"x264-params": "open-gop=1"}
    )
    ref = np.stack(list(iter_frames(path)))
    assert ref.shape[0] == 23

    # the seek path alone must give the exact frames (decoding from the start is disabled)
    def no_fallback(*args: object) -> list[np.ndarray]:
        raise AssertionError("read_frames fell back to decoding from the start")

    with monkeypatch.context() as m:
        m.setattr(video, "_read_by_decoding", no_fallback)
        for start in range(1, 23):
            for count in (1, 4, 30):
                assert np.array_equal(
                    read_frames(path, start, count), ref[start : start + count]
                ), (start, count)
    for start, count in [(0, 1), (0, 23), (3, 7), (22, 1), (20, 10)]:
        assert np.array_equal(read_frames(path, start, count), ref[start : start + count])

    y4m = tmp_path / "c.y4m"  # no index: decodes from the start
    write_all(y4m, ref[:9])
    for start in range(9):
        assert np.array_equal(read_frames(y4m, start, 3), ref[:9][start : start + 3])
    with pytest.raises(VideoInputError, match="past the end"):
        read_frames(y4m, 9, 1)
    with pytest.raises(CodecConfigError):
        read_frames(y4m, -1, 1)
    with pytest.raises(CodecConfigError):
        read_frames(y4m, 0, 0)


def test_count_frames_decodes_when_the_container_does_not_say(tmp_path: Path) -> None:
    path = tmp_path / "c.y4m"
    write_all(path, moving_frames(7, 8, 8))
    assert probe(path).n_frames is None
    assert count_frames(path) == 7


# --------------------------------------------------------------------------- errors


@pytest.fixture
def small_mp4(tmp_path: Path) -> Path:
    path = tmp_path / "ok.mp4"
    write_h264(path, moving_frames(12, 32, 48), Fraction(25), g="4")
    return path


def _all_readers_fail(path: Path, match: str) -> None:
    readers = [
        probe,
        lambda p: list(iter_frames(p)),
        lambda p: list(iter_gops(p, 4)),
        lambda p: read_frames(p, 0, 2),
        count_frames,
    ]
    for read in readers:
        with pytest.raises(VideoInputError, match=match):
            read(path)


def test_text_file_is_not_a_video(tmp_path: Path) -> None:
    for name in ("notes.txt", "notes.mp4"):
        path = tmp_path / name
        path.write_text("this is not a video\n" * 40)
        _all_readers_fail(path, "cannot read video")


def test_empty_missing_and_frameless_inputs(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    _all_readers_fail(tmp_path / "empty.mp4", "empty")
    _all_readers_fail(tmp_path / "missing.mp4", "no such file")
    (tmp_path / "dir").mkdir()
    _all_readers_fail(tmp_path / "dir", "000000.png")
    (tmp_path / "hdr.y4m").write_bytes(b"YUV4MPEG2 W8 H8 F25:1 Ip A1:1 C444\n")
    _all_readers_fail(tmp_path / "hdr.y4m", "zero frames")


def test_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    _all_readers_fail(path, "no video stream")


def test_truncated_videos(tmp_path: Path, small_mp4: Path) -> None:
    data = small_mp4.read_bytes()
    for cut in (len(data) // 2, 200):
        path = tmp_path / f"cut{cut}.mp4"
        path.write_bytes(data[:cut])
        _all_readers_fail(path, "cannot read video")

    y4m = tmp_path / "ok.y4m"
    write_all(y4m, moving_frames(3, 8, 10))
    cut_y4m = tmp_path / "cut.y4m"
    cut_y4m.write_bytes(y4m.read_bytes()[:-100])
    with pytest.raises(VideoInputError, match="frame boundary"):
        list(iter_frames(cut_y4m))


def test_corrupt_data_never_leaks_a_pyav_error(tmp_path: Path, small_mp4: Path) -> None:
    data = bytearray(small_mp4.read_bytes())
    for i in range(1500, len(data) - 1500, 53):
        data[i] ^= 0xA5
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(bytes(data))
    for read in (
        probe,
        lambda p: list(iter_frames(p)),
        lambda p: read_frames(p, 5, 3),
        count_frames,
    ):
        with contextlib.suppress(VideoInputError):  # any other exception fails the test
            read(path)
