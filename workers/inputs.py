"""Fetch a job's input to a local file and check it is a video the service accepts.

Inputs are a storage key (uploads), an ``s3://bucket/key`` URI, or a
``file:///abs/path`` under one of ``settings.allowed_input_roots``. Every
problem becomes a :class:`JobError` whose code and message tell the user what
to do; nothing here retries (a missing upload stays missing).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from infra.storage import InvalidKeyError, ObjectNotFoundError, S3Storage, parse_s3_uri

if TYPE_CHECKING:
    from codec.video import VideoInfo
    from infra.settings import Settings
    from infra.storage import Storage


class JobError(Exception):
    """A job cannot go on; ``code`` is machine-readable, ``message`` says what to do.

    ``retryable``: a later attempt may succeed (infrastructure trouble), so the
    runner re-queues the job while attempts remain.
    """

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


# first bytes of containers we know, to tell a damaged video from something that never was one
_VIDEO_MAGIC: tuple[tuple[int, bytes], ...] = (
    (4, b"ftyp"),  # MP4 / MOV / 3GP
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"free"),
    (4, b"wide"),
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM
    (0, b"RIFF"),  # AVI
    (0, b"YUV4MPEG2"),
    (0, b"OggS"),
    (0, b"FLV"),
    (0, b"\x00\x00\x01\xba"),  # MPEG-PS
    (0, b"\x00\x00\x01\xb3"),  # MPEG-1/2 elementary stream
    (0, b"\x00\x00\x00\x01"),  # H.264/HEVC Annex B
)


def looks_like_video_container(path: Path) -> bool:
    """Whether the file starts like a video container we know (damaged or not)."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    return any(head[off : off + len(magic)] == magic for off, magic in _VIDEO_MAGIC)


def _name_of(uri: str) -> str:
    name = Path(urlsplit(uri).path).name if "://" in uri else Path(uri).name
    return name or "input"


def check_input_bytes(size_bytes: int, settings: Settings) -> None:
    """Refuse an input over ``settings.max_input_bytes`` before it is downloaded or read."""
    if size_bytes > settings.max_input_bytes:
        raise JobError(
            "input_too_large",
            f"the input is {size_bytes} bytes, over the limit of {settings.max_input_bytes}; "
            "compress or cut the video and submit again",
        )


def fetch_input(uri: str, storage: Storage, settings: Settings, dest_dir: Path) -> Path:
    """Make the input at ``uri`` a local file under ``dest_dir`` (or return a file:// path).

    Its size is checked against ``max_input_bytes`` first (a HEAD for objects), so an
    oversized object never fills the runner's disk.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / f"input-{_name_of(uri)}"
    if uri.startswith("file://"):
        path = _local_input(uri, settings)
        check_input_bytes(path.stat().st_size, settings)
        return path
    if uri.startswith("s3://"):
        try:
            bucket, key = parse_s3_uri(uri)
        except ValueError as exc:
            raise JobError("input_invalid_uri", f"{exc}") from exc
        s3 = S3Storage(bucket, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region)
        try:
            check_input_bytes(s3.size(key), settings)
            s3.download_file(key, target)
        except JobError:
            raise
        except ObjectNotFoundError as exc:
            raise JobError(
                "input_not_found",
                f"input {uri} does not exist; check the bucket and key, then submit again",
            ) from exc
        except Exception as exc:
            raise JobError(
                "input_unreachable", f"could not download {uri}: {exc}", retryable=True
            ) from exc
        return target
    if "://" in uri:
        raise JobError(
            "input_invalid_uri",
            f"input {uri!r} has an unsupported scheme; use an upload key, s3://bucket/key "
            "or file:///absolute/path",
        )
    try:
        check_input_bytes(storage.size(uri), settings)
        storage.download_file(uri, target)
    except JobError:
        raise
    except InvalidKeyError as exc:
        raise JobError("input_invalid_uri", f"input key is not valid: {exc}") from exc
    except ObjectNotFoundError as exc:
        raise JobError(
            "input_not_found",
            f"uploaded input {uri!r} is not in storage (deleted or never completed); upload again",
        ) from exc
    except Exception as exc:
        raise JobError(
            "input_unreachable", f"could not read {uri!r} from storage: {exc}", retryable=True
        ) from exc
    return target


def _local_input(uri: str, settings: Settings) -> Path:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise JobError("input_invalid_uri", f"{uri!r} names a remote host; use file:///abs/path")
    path = Path(unquote(parts.path))
    if not path.is_absolute():
        raise JobError("input_invalid_uri", f"{uri!r} is not an absolute path")
    resolved = path.resolve()
    roots = [Path(r).resolve() for r in settings.allowed_input_roots]
    if not any(resolved.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(r) for r in roots) or "none configured"
        raise JobError(
            "input_forbidden",
            f"{resolved} is outside the allowed input folders ({allowed}); upload the file "
            "instead or ask the operator to add its folder to SPLATPACK_ALLOWED_INPUT_ROOTS",
        )
    if not resolved.is_file():
        raise JobError("input_not_found", f"input file {resolved} does not exist")
    return resolved


@dataclass(frozen=True)
class CheckedInput:
    """A probed input and how much of it the job encodes."""

    info: VideoInfo
    n_frames: int  # frames the job encodes (after max_frames)
    fps: Fraction


def check_input(path: Path, settings: Settings, max_frames: int | None) -> CheckedInput:
    """Probe ``path`` and apply the size and duration limits from ``settings``."""
    from codec.errors import VideoInputError
    from codec.video import iter_frames, probe

    size = os.path.getsize(path)
    if size == 0:
        raise JobError("input_empty", "the input file is empty (0 bytes); upload the video again")
    try:
        info = probe(path)
    except VideoInputError as exc:
        if looks_like_video_container(path):
            raise JobError(
                "input_corrupt",
                f"the input looks like a video file but cannot be read ({exc}); it may be "
                "truncated or damaged: re-export or re-upload it",
            ) from exc
        raise JobError(
            "input_not_video",
            f"the input is not a video we can read ({exc}); upload a video file "
            "(MP4/H.264, MKV, WebM, AVI, Y4M, ...)",
        ) from exc
    pixels = info.width * info.height
    if pixels > settings.max_input_pixels:
        raise JobError(
            "input_too_large",
            f"the video is {info.width}x{info.height} ({pixels} pixels per frame), over the "
            f"limit of {settings.max_input_pixels}; downscale it and submit again",
        )
    n_total = info.n_frames
    if n_total is None:  # the container does not say: count by decoding (bounded)
        limit = settings.max_input_frames + 1
        if max_frames is not None:
            limit = min(limit, max_frames)
        try:
            n_total = sum(1 for _ in iter_frames(path, max_frames=limit))
        except VideoInputError as exc:
            raise JobError(
                "input_corrupt", f"the video cannot be decoded ({exc}); re-export it"
            ) from exc
    n_frames = n_total if max_frames is None else min(n_total, max_frames)
    if n_frames <= 0:
        raise JobError(
            "input_empty", "the video has no frames; check the file plays and submit again"
        )
    if n_frames > settings.max_input_frames:
        raise JobError(
            "input_too_large",
            f"the video has {n_frames} frames, over the limit of {settings.max_input_frames}; "
            "cut it shorter or set max_frames",
        )
    fps = info.fps if info.fps and info.fps > 0 else Fraction(25, 1)
    seconds = float(n_frames / fps)
    if seconds > settings.max_input_seconds:
        raise JobError(
            "input_too_large",
            f"the video lasts {seconds:.0f} s, over the limit of {settings.max_input_seconds:.0f} s; "
            "cut it shorter or set max_frames",
        )
    return CheckedInput(info=info, n_frames=n_frames, fps=fps)
