"""Reading and writing ordinary video files (PyAV) as 8-bit RGB frames.

Reading: anything FFmpeg decodes (plus a directory of ``000000.png``... frames as
written by :class:`VideoWriter`), converted to RGB24 at the coded size (odd sizes
kept). Frame ``i`` is the ``i``-th frame the decoder outputs; :func:`iter_frames`,
:func:`iter_gops` and :func:`read_frames` agree on that numbering exactly. Every
failure to read raises :class:`~codec.errors.VideoInputError`, never a raw PyAV
error.

Writing (:class:`VideoWriter`), chosen by the path:

- ``.mp4``: H.264 (libx264, CRF 12, preset medium), BT.601 limited range;
  4:2:0 when width and height are even, 4:4:4 otherwise (4:2:0 H.264 cannot
  carry odd sizes). Near-lossless, not exact.
- ``.y4m``: YUV4MPEG2 written here. Default ``y4m_format="444p10"``: 4:4:4,
  10-bit, full range (``C444p10 XCOLORRANGE=FULL``), which reads back to exactly
  the RGB that was written. ``"444"`` (8-bit full range, within 1 level) and
  ``"420"`` (8-bit BT.601 limited range ``C420jpeg``, the format most tools
  expect) are approximate.
- anything else without a suffix (or an existing directory): PNG frames
  ``000000.png``, ``000001.png``, ... (lossless). PNG directories carry no frame
  rate; they read back at 25 fps (FFmpeg's image2 default).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, cast

import av
import av.container
import av.video.stream
import numpy as np
from av.video.codeccontext import VideoCodecContext

from codec.errors import CodecConfigError, CodecError, VideoInputError

PathLike = str | os.PathLike[str]
Y4mFormat = Literal["444p10", "444", "420"]

MP4_CRF = 12
PNG_PATTERN = "%06d.png"
DEFAULT_FPS = Fraction(25)  # FFmpeg's default when a source states no rate (PNG directories)

_ADVICE = (
    "check that the path names a complete video file FFmpeg can decode "
    "(e.g. .mp4, .mkv, .mov, .avi, .y4m) or a directory of 000000.png... frames; "
    "re-export or re-copy it if it was cut short"
)
# read_frames may seek only where one packet gives exactly one frame and pts identify frames
_SEEK_FORMATS = ("mov", "mp4", "matroska", "webm")
_SEEK_CODECS = frozenset({"h264", "hevc", "av1", "vp9", "vp8"})
_SEEK_BACKOFF = (0, 16, 128)  # frames before `start` to aim the seek at, tried in turn
# FFmpeg "decodes" text files as ANSI-art video; such input is never a video here
_TEXT_FORMATS = frozenset({"tty", "bin", "idf", "xbin", "adf"})
_TEXT_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})
_AVCOL_SPC_BT470BG = 5  # BT.601 matrix; the same number is swscale's SWS_CS_ITU601
_AVCOL_RANGE_MPEG = 1  # limited ("TV") range


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learns about a video."""

    width: int
    height: int
    fps: Fraction
    n_frames: int | None  # as the container states it; None when it does not
    duration_s: float | None
    codec_name: str


# --------------------------------------------------------------------------- reading


def _input_error(path: PathLike, problem: str, exc: BaseException | None = None) -> VideoInputError:
    detail = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    return VideoInputError(f"cannot read video {os.fspath(path)!r}: {problem}{detail}; {_ADVICE}")


@contextmanager
def _reading(path: PathLike, problem: str) -> Iterator[None]:
    """Turn any PyAV/OS error raised inside into VideoInputError."""
    try:
        yield
    except CodecError:
        raise
    except (av.FFmpegError, OSError, EOFError, ValueError, RuntimeError) as exc:
        raise _input_error(path, problem, exc) from exc


def _open_input(path: PathLike) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open ``path`` (file or PNG directory) and return it with its first video stream."""
    p = Path(path)
    if not p.exists():
        raise _input_error(path, "no such file or directory")
    with _reading(path, "not a readable video container"):
        if p.is_dir():
            if not (p / (PNG_PATTERN % 0)).is_file():
                raise _input_error(path, f"directory holds no {PNG_PATTERN % 0}")
            container = av.open(str(p / PNG_PATTERN), mode="r", format="image2")
        else:
            if p.stat().st_size == 0:
                raise _input_error(path, "the file is empty")
            container = av.open(str(p), mode="r")
    if not container.streams.video:
        container.close()
        raise _input_error(path, "the file has no video stream")
    stream = container.streams.video[0]
    if container.format.name in _TEXT_FORMATS or stream.codec_context.name in _TEXT_CODECS:
        container.close()
        raise _input_error(path, "it is text (FFmpeg would render it as ANSI art), not a video")
    stream.thread_type = "AUTO"
    return container, stream


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """Decoded frame -> contiguous uint8 [H, W, 3] RGB (colour tags of the frame respected)."""
    return np.ascontiguousarray(frame.to_ndarray(format="rgb24"))


def _decoded(path: PathLike, max_frames: int | None = None) -> Iterator[av.VideoFrame]:
    """Decoded frames in output order; raises VideoInputError on any failure or on zero frames."""
    container, stream = _open_input(path)
    n = 0
    size: tuple[int, int] | None = None
    packet_size = 0
    try:
        with _reading(path, "decoding failed (corrupt or truncated data)"):
            for packet in container.demux(stream):
                packet_size = max(packet_size, packet.size)
                for frame in packet.decode():
                    if size is None:
                        size = (frame.width, frame.height)
                    elif (frame.width, frame.height) != size:
                        raise _input_error(
                            path,
                            f"frame {n} is {frame.width}x{frame.height} but the video started at "
                            f"{size[0]}x{size[1]}; re-encode it at one size",
                        )
                    yield frame
                    n += 1
                    if max_frames is not None and n >= max_frames:
                        return
        if n == 0:
            raise _input_error(path, "the video stream decodes to zero frames")
        if container.format.name == "yuv4mpegpipe":
            _check_y4m_complete(path, n, packet_size)
    finally:
        container.close()


def _check_y4m_complete(path: PathLike, n_frames: int, frame_bytes: int) -> None:
    """FFmpeg silently drops a partial last Y4M frame; a cut-short file is an error here."""
    with open(path, "rb") as f:
        header_len = f.read(4096).find(b"\n") + 1
    extra = Path(path).stat().st_size - header_len - n_frames * (len(b"FRAME\n") + frame_bytes)
    if extra != 0:
        raise _input_error(
            path,
            f"the Y4M file does not end on a frame boundary ({n_frames} whole frames, then "
            f"{extra} more bytes); it is truncated or its frames carry parameters",
        )


def _check_max_frames(max_frames: int | None) -> None:
    if max_frames is not None and max_frames < 1:
        raise CodecConfigError(
            f"max_frames={max_frames!r} is out of range; use None or an int >= 1"
        )


def probe(path: PathLike) -> VideoInfo:
    """Size, frame rate, frame count and codec of ``path``; decodes the first frame to check it reads."""
    container, stream = _open_input(path)
    try:
        with _reading(path, "decoding failed (corrupt or truncated data)"):
            first = next(iter(container.decode(stream)), None)
            if first is None:
                raise _input_error(path, "the video stream decodes to zero frames")
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = Fraction(rate) if rate else DEFAULT_FPS
            n_frames = int(stream.frames) if stream.frames and stream.frames > 0 else None
            duration_s: float | None = None
            if stream.duration and stream.time_base:
                duration_s = float(stream.duration * stream.time_base)
            elif container.duration:
                duration_s = container.duration / av.time_base
            elif n_frames is not None:
                duration_s = float(n_frames / fps)
            return VideoInfo(
                width=first.width,
                height=first.height,
                fps=fps,
                n_frames=n_frames,
                duration_s=duration_s,
                codec_name=stream.codec_context.name,
            )
    finally:
        container.close()


def iter_frames(path: PathLike, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Yield the frames of ``path`` as uint8 [H, W, 3] RGB, at most ``max_frames``."""
    _check_max_frames(max_frames)
    for frame in _decoded(path, max_frames):
        yield _to_rgb(frame)


def iter_gops(
    path: PathLike, gop: int, max_frames: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_frame, frames uint8[T, H, W, 3])`` with ``T == gop`` except maybe the last.

    Streams: only one GOP is held in memory at a time; each yielded array is new.
    """
    if gop < 1:
        raise CodecConfigError(f"gop={gop!r} is out of range; use an int >= 1")
    _check_max_frames(max_frames)
    buf: np.ndarray | None = None
    first = t = 0
    for i, frame in enumerate(iter_frames(path, max_frames)):
        if buf is None:
            buf = np.empty((gop, *frame.shape), dtype=np.uint8)
            first, t = i, 0
        buf[t] = frame
        t += 1
        if t == gop:
            yield first, buf
            buf = None
    if buf is not None:
        yield first, buf[:t]


def count_frames(path: PathLike) -> int:
    """Number of frames in ``path``: the container's count when it states one, else by decoding."""
    info = probe(path)
    if info.n_frames is not None:
        return info.n_frames
    return sum(1 for _ in _decoded(path))


def _read_by_decoding(path: PathLike, start: int, count: int) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for i, frame in enumerate(_decoded(path, start + count)):
        if i >= start:  # frames before `start` are decoded but not converted
            out.append(_to_rgb(frame))
    return out


@functools.lru_cache(maxsize=16)
def _pts_index_cached(path: str, size: int, mtime_ns: int) -> tuple[int, ...] | None:
    """Presentation timestamps of all video packets, sorted, when they identify frames; else None."""
    del size, mtime_ns  # part of the cache key only
    try:
        container = av.open(path, mode="r")
    except (av.FFmpegError, OSError, ValueError):
        return None
    try:
        if not container.streams.video or not any(
            f in container.format.name.split(",") for f in _SEEK_FORMATS
        ):
            return None
        stream = container.streams.video[0]
        if stream.codec_context.name not in _SEEK_CODECS:
            return None
        pts: list[int] = []
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the demuxer's end-of-stream flush packet
            if packet.pts is None or packet.is_discard or packet.is_corrupt:
                return None
            pts.append(int(packet.pts))
    except (av.FFmpegError, OSError, ValueError, EOFError):
        return None
    finally:
        container.close()
    pts.sort()
    if len(set(pts)) != len(pts):
        return None
    return tuple(pts)


def _pts_index(path: PathLike) -> tuple[int, ...] | None:
    p = Path(path)
    if not p.is_file():
        return None
    st = p.stat()
    return _pts_index_cached(str(p.resolve()), st.st_size, st.st_mtime_ns)


def _read_by_seeking(
    path: PathLike, index: tuple[int, ...], start: int, count: int, aim: int
) -> list[np.ndarray] | None:
    """Frames ``start .. start+count-1`` after seeking near frame ``aim`` (<= start).

    Returns None (caller falls back to decoding from the start) unless the seek
    provably lands well: the first decoded frame is a keyframe at or before
    ``start``, and from it every frame's pts is the next entry of ``index``.
    """
    pos = {p: i for i, p in enumerate(index)}
    stop = min(start + count, len(index))
    container, stream = _open_input(path)
    out: list[np.ndarray] = []
    try:
        with _reading(path, "decoding failed (corrupt or truncated data)"):
            container.seek(index[aim], stream=stream, backward=True, any_frame=False)
            expect: int | None = None
            for frame in container.decode(stream):
                i = pos.get(frame.pts) if frame.pts is not None else None
                if i is None or (expect is None and (not frame.key_frame or i > start)):
                    return None
                if expect is not None and i != expect:
                    return None
                if i >= start:
                    out.append(_to_rgb(frame))
                expect = i + 1
                if expect >= stop:
                    return out
        return None
    finally:
        container.close()


def read_frames(path: PathLike, start: int, count: int) -> np.ndarray:
    """Frames ``start .. start+count-1`` of ``path`` as uint8 [T, H, W, 3].

    Exactly ``list(iter_frames(path))[start:start + count]``: ``T < count`` when the
    video ends first; VideoInputError when ``start`` is past the last frame. For
    MP4/MKV with H.264/HEVC/AV1/VP8/VP9 it seeks to a keyframe before ``start``
    and identifies frames by pts (checked frame by frame); otherwise, or when a
    check fails, it decodes from the first frame.
    """
    if start < 0 or count < 1:
        raise CodecConfigError(
            f"read_frames(start={start}, count={count}): need start >= 0, count >= 1"
        )
    frames: list[np.ndarray] | None = None
    if start > 0:
        index = _pts_index(path)
        if index is not None and start < len(index):
            for back in _SEEK_BACKOFF:
                frames = _read_by_seeking(path, index, start, count, max(0, start - back))
                if frames is not None or start - back <= 0:
                    break
    if frames is None:
        frames = _read_by_decoding(path, start, count)
    if not frames:
        raise _input_error(path, f"start frame {start} is past the end of the video")
    return np.stack(frames)


# --------------------------------------------------------------------------- writing

# BT.601 luma weights and chroma scales (Cb = (B - Y) / 1.772, Cr = (R - Y) / 1.402)
_KR, _KG, _KB = 0.299, 0.587, 0.114


def _rgb_to_ycbcr(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 [H, W, 3] -> float64 Y in [0, 255], Cb and Cr in [-127.5, 127.5]."""
    rgb = frame.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = _KR * r + _KG * g + _KB * b
    return y, (b - y) / 1.772, (r - y) / 1.402


def _quantize(x: np.ndarray, hi: int, dtype: type[np.unsignedinteger[Any]]) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 0, hi).astype(dtype)


def _chroma_420(c: np.ndarray) -> np.ndarray:
    """Mean of 2x2 blocks (centre-sited, as C420jpeg); odd sizes padded by edge replication."""
    h, w = c.shape
    c = np.pad(c, ((0, h % 2), (0, w % 2)), mode="edge")
    return 0.25 * (c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2])


def y4m_frame_bytes(frame: np.ndarray, y4m_format: Y4mFormat) -> bytes:
    """The three planes of one Y4M frame (without the ``FRAME`` line) for uint8 [H, W, 3] RGB."""
    y, cb, cr = _rgb_to_ycbcr(frame)
    if y4m_format == "444p10":  # full range, 10 bit: 4 * value, chroma centred on 512
        planes = [_quantize(4 * y, 1023, np.uint16), _quantize(4 * cb + 512, 1023, np.uint16),
                  _quantize(4 * cr + 512, 1023, np.uint16)]  # fmt: skip
        return b"".join(p.astype("<u2").tobytes() for p in planes)
    if y4m_format == "444":  # full range, 8 bit
        planes = [_quantize(y, 255, np.uint8), _quantize(cb + 128, 255, np.uint8),
                  _quantize(cr + 128, 255, np.uint8)]  # fmt: skip
        return b"".join(p.tobytes() for p in planes)
    # "420": BT.601 limited range, chroma averaged over 2x2
    planes = [
        _quantize(16 + y * (219 / 255), 255, np.uint8),
        _quantize(128 + _chroma_420(cb) * (224 / 255), 255, np.uint8),
        _quantize(128 + _chroma_420(cr) * (224 / 255), 255, np.uint8),
    ]
    return b"".join(p.tobytes() for p in planes)


def y4m_header(width: int, height: int, fps: Fraction, y4m_format: Y4mFormat) -> bytes:
    """The YUV4MPEG2 stream header line for ``y4m_format``."""
    colour = {
        "444p10": "C444p10 XCOLORRANGE=FULL",
        "444": "C444 XCOLORRANGE=FULL",
        "420": "C420jpeg XCOLORRANGE=LIMITED",
    }[y4m_format]
    return (
        f"YUV4MPEG2 W{width} H{height} F{fps.numerator}:{fps.denominator} Ip A1:1 {colour}\n"
    ).encode("ascii")


class VideoWriter:
    """Writes uint8 [H, W, 3] RGB frames to ``.mp4``, ``.y4m`` or a PNG directory (see module doc).

    Use as a context manager or call :meth:`close`; the file is complete only after closing.
    """

    def __init__(
        self,
        path: PathLike,
        width: int,
        height: int,
        fps: Fraction,
        *,
        crf: int = MP4_CRF,
        y4m_format: Y4mFormat = "444p10",
    ) -> None:
        if width < 1 or height < 1:
            raise CodecConfigError(f"VideoWriter size {width}x{height} is out of range; use >= 1x1")
        fps = Fraction(fps)
        if fps <= 0:
            raise CodecConfigError(f"VideoWriter fps={fps} is out of range; use a positive rate")
        if y4m_format not in ("444p10", "444", "420"):
            raise CodecConfigError(f"y4m_format={y4m_format!r}; use '444p10', '444' or '420'")
        if not 0 <= crf <= 51:
            raise CodecConfigError(f"crf={crf} is out of range; use [0, 51]")
        self.path = Path(path)
        self.width, self.height, self.fps = width, height, fps
        self.n_written = 0
        self._closed = False
        suffix = self.path.suffix.lower()
        self._mp4: av.container.OutputContainer | None = None
        self._mp4_stream: av.video.stream.VideoStream | None = None
        self._y4m: IO[bytes] | None = None
        self._y4m_format: Y4mFormat = y4m_format
        self._png: VideoCodecContext | None = None
        if suffix == ".mp4":
            self._open_mp4(crf)
        elif suffix == ".y4m":
            self._y4m = open(self.path, "wb")  # noqa: SIM115 (closed in close())
            self._y4m.write(y4m_header(width, height, fps, y4m_format))
        elif suffix == "" or self.path.is_dir():
            self._open_png_dir()
        else:
            raise CodecConfigError(
                f"cannot write {os.fspath(path)!r}: unknown output type {suffix!r}; "
                "use a .mp4 or .y4m file or a directory for PNG frames"
            )

    def _open_mp4(self, crf: int) -> None:
        even = self.width % 2 == 0 and self.height % 2 == 0
        container = av.open(str(self.path), mode="w")
        stream = container.add_stream("libx264", rate=self.fps)
        stream.width, stream.height = self.width, self.height
        stream.pix_fmt = "yuv420p" if even else "yuv444p"
        ctx = stream.codec_context
        ctx.time_base = 1 / self.fps
        ctx.colorspace = _AVCOL_SPC_BT470BG
        ctx.color_range = _AVCOL_RANGE_MPEG
        stream.options = {"crf": str(crf), "preset": "medium"}
        self._mp4, self._mp4_stream = container, stream

    def _open_png_dir(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise CodecConfigError(
                f"cannot write PNG frames into {os.fspath(self.path)!r}: it is a file; "
                "name a .mp4 or .y4m file or a directory"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        if any(self.path.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png")):
            raise CodecConfigError(
                f"output directory {os.fspath(self.path)!r} already holds numbered PNG frames; "
                "choose an empty or new directory"
            )
        png = cast(VideoCodecContext, av.CodecContext.create("png", "w"))
        png.width, png.height, png.pix_fmt = self.width, self.height, "rgb24"
        png.time_base = 1 / self.fps
        self._png = png

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 [H, W, 3] RGB frame."""
        if self._closed:
            raise RuntimeError(f"VideoWriter for {os.fspath(self.path)!r} is closed")
        if frame.dtype != np.uint8 or frame.shape != (self.height, self.width, 3):
            raise CodecConfigError(
                f"VideoWriter expects uint8 frames of shape {(self.height, self.width, 3)}; "
                f"got {frame.dtype} {frame.shape}"
            )
        frame = np.ascontiguousarray(frame)
        if self._y4m is not None:
            self._y4m.write(b"FRAME\n" + y4m_frame_bytes(frame, self._y4m_format))
        elif self._mp4 is not None and self._mp4_stream is not None:
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf = vf.reformat(
                format=self._mp4_stream.pix_fmt,
                src_colorspace="ITU601",
                dst_colorspace="ITU601",
                dst_color_range="MPEG",
            )
            vf.pts = self.n_written
            vf.time_base = 1 / self.fps
            for packet in self._mp4_stream.encode(vf):
                self._mp4.mux(packet)
        elif self._png is not None:
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = self.n_written
            data = b"".join(bytes(p) for p in self._png.encode(vf))
            (self.path / (PNG_PATTERN % self.n_written)).write_bytes(data)
        self.n_written += 1

    def close(self) -> None:
        """Flush and close; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._y4m is not None:
            self._y4m.close()
        if self._mp4 is not None and self._mp4_stream is not None:
            try:
                for packet in self._mp4_stream.encode(None):
                    self._mp4.mux(packet)
            finally:
                self._mp4.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
