"""The ``.gsv`` file: a stream header, GOP chunks in any order, an index and a fixed footer.

Layout (integers little-endian; full description in docs/FORMAT.md)::

    file header  magic b"\\x89GSV\\r\\n\\x1a\\n" | u16 version | u32 L | L bytes JSON | u32 crc32
    GOP chunk    b"GOPC" | u32 index | u32 first_frame | u32 n_frames | u64 length | u32 crc32 | payload
    ...          (chunks in the order they were written; they tile the bytes up to the index)
    index        b"GIDX" | u32 count | count x (u32 index, u32 first_frame, u32 n_frames,
                 u64 offset, u64 length, u32 crc32) sorted by index | u32 crc32
    footer       b"GSVF" | u64 index_offset | u64 index_length | u64 n_frames | u32 crc32

The writer streams chunks as GOPs arrive (any order, e.g. from parallel workers) and writes
the index and the 32-byte footer on :meth:`ContainerWriter.close`, so the output need not be
seekable. The reader finds the footer at the end, checks every length, offset and CRC
against the real file size before reading anything it points at, and raises
:class:`BitstreamError` (what, and at which byte offset) on any inconsistency.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import json
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO

import numpy as np

from codec.bitstream import DEFAULT_LIMITS, DecodeLimits
from codec.errors import BitstreamError, CodecError

MAGIC = b"\x89GSV\r\n\x1a\n"
VERSION = 1
MAX_HEADER_BYTES = 1 << 20
MAX_SIDE = 65535
MAX_GOP = 10_000
MAX_FPS_TERM = 2**31 - 1
MAX_GOPS = 10_000_000
U32_MAX = 2**32 - 1

_PREFIX = struct.Struct("<8sHI")  # magic, version, header length
_CHUNK = struct.Struct("<4sIIIQI")  # magic, index, first_frame, n_frames, length, crc
_CHUNK_MAGIC = b"GOPC"
_INDEX_HEAD = struct.Struct("<4sI")  # magic, count
_INDEX_MAGIC = b"GIDX"
_ENTRY = np.dtype(
    [
        ("index", "<u4"),
        ("first", "<u4"),
        ("n", "<u4"),
        ("offset", "<u8"),
        ("length", "<u8"),
        ("crc", "<u4"),
    ]
)  # 32 bytes, packed
_FOOTER = struct.Struct(
    "<4sQQQI"
)  # magic, index_offset, index_length, n_frames, crc of the first 28 bytes
_FOOTER_MAGIC = b"GSVF"
_CRC = struct.Struct("<I")
_MIN_SIZE = _PREFIX.size + _CRC.size + _INDEX_HEAD.size + _CRC.size + _FOOTER.size


def _crc(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class StreamHeader:
    """Stream-wide facts: frame size, frame rate ``fps_num / fps_den``, GOP length, codec params.

    ``codec_params`` must be JSON-serialisable (it round-trips through JSON: tuples come
    back as lists).
    """

    width: int
    height: int
    fps_num: int
    fps_den: int
    gop: int
    codec_params: dict[str, Any] = field(default_factory=dict)

    def problem(self) -> str | None:
        """What is wrong with this header, or None."""
        for name, value, hi in (
            ("width", self.width, MAX_SIDE),
            ("height", self.height, MAX_SIDE),
            ("fps_num", self.fps_num, MAX_FPS_TERM),
            ("fps_den", self.fps_den, MAX_FPS_TERM),
            ("gop", self.gop, MAX_GOP),
        ):
            if not _is_int(value) or not 1 <= value <= hi:
                return f"{name}={value!r} must be an integer in [1, {hi}]"
        if not isinstance(self.codec_params, dict) or not all(
            isinstance(k, str) for k in self.codec_params
        ):
            return "codec_params must be a dict with string keys"
        return None

    def to_json(self) -> bytes:
        """Canonical UTF-8 JSON (sorted keys); raises CodecError if it is invalid or not serialisable."""
        problem = self.problem()
        if problem:
            raise CodecError(f"StreamHeader: {problem}")
        obj = {
            "width": self.width,
            "height": self.height,
            "fps_num": self.fps_num,
            "fps_den": self.fps_den,
            "gop": self.gop,
            "codec_params": self.codec_params,
        }
        try:
            text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise CodecError(f"StreamHeader: codec_params is not JSON-serialisable: {exc}") from exc
        data = text.encode("utf-8")
        if len(data) > MAX_HEADER_BYTES:
            raise CodecError(f"StreamHeader: {len(data)} bytes of JSON exceed {MAX_HEADER_BYTES}")
        return data

    @staticmethod
    def from_json(data: bytes, offset: int = 0) -> StreamHeader:
        """Inverse of :meth:`to_json`; BitstreamError names ``offset`` (where the JSON starts)."""
        where = f"stream header at byte {offset}"
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise BitstreamError(f"{where}: not valid UTF-8 JSON ({exc})") from exc
        keys = {"width", "height", "fps_num", "fps_den", "gop", "codec_params"}
        if not isinstance(obj, dict) or set(obj) != keys:
            got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise BitstreamError(f"{where}: expected the keys {sorted(keys)}, got {got}")
        header = StreamHeader(**obj)
        problem = header.problem()
        if problem:
            raise BitstreamError(f"{where}: {problem}")
        return header


@dataclass(frozen=True)
class GopEntry:
    """One GOP in the index: its chunk starts at ``offset``; the payload is ``length`` bytes after
    the 28-byte chunk header, with CRC-32 ``crc``."""

    index: int
    first_frame: int
    n_frames: int
    offset: int
    length: int
    crc: int


class ContainerWriter:
    """Writes a ``.gsv`` to a path (atomically: temp file, fsync, rename) or a binary file.

    GOPs may arrive in any order; :meth:`close` checks they are GOPs 0..G-1 covering frames
    0..n-1 back to back and raises :class:`CodecError` otherwise (a path target is then not
    created). Leaving the ``with`` block by an exception aborts the same way.
    """

    def __init__(self, target: str | os.PathLike[str] | BinaryIO, header: StreamHeader) -> None:
        header_json = header.to_json()
        self.header = header
        self._entries: dict[int, GopEntry] = {}
        self._closed = False
        self._path: Path | None = None
        self._tmp: Path | None = None
        self._file: IO[bytes]
        if isinstance(target, (str, os.PathLike)):
            self._path = Path(target)
            fd, tmp = tempfile.mkstemp(
                dir=self._path.parent, prefix=f".{self._path.name}.", suffix=".tmp"
            )
            self._tmp = Path(tmp)
            self._file = os.fdopen(fd, "wb")
        else:
            self._file = target
        self._pos = 0
        try:
            self._write(_PREFIX.pack(MAGIC, VERSION, len(header_json)) + header_json)
            self._write(
                _CRC.pack(_crc(_PREFIX.pack(MAGIC, VERSION, len(header_json)) + header_json))
            )
        except BaseException:
            self.abort()
            raise

    def _write(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        self._pos += len(data)

    @property
    def bytes_written(self) -> int:
        """Bytes of the file so far (all of it after :meth:`close`)."""
        return self._pos

    def add_gop(self, index: int, first_frame: int, n_frames: int, payload: bytes) -> None:
        """Append GOP ``index`` (frames ``first_frame .. first_frame + n_frames - 1``)."""
        if self._closed:
            raise CodecError("ContainerWriter: add_gop after close")
        for name, value, lo in (
            ("index", index, 0),
            ("first_frame", first_frame, 0),
            ("n_frames", n_frames, 1),
        ):
            if not _is_int(value) or not lo <= value <= U32_MAX:
                raise CodecError(
                    f"add_gop: {name}={value!r} must be an integer in [{lo}, {U32_MAX}]"
                )
        if index in self._entries:
            raise CodecError(f"add_gop: GOP {index} was already added")
        data = memoryview(payload).cast("B")
        entry = GopEntry(index, first_frame, n_frames, self._pos, len(data), _crc(data))
        self._write(
            _CHUNK.pack(_CHUNK_MAGIC, index, first_frame, n_frames, entry.length, entry.crc)
        )
        self._write(data)
        self._entries[index] = entry

    def _coverage_problem(self) -> str | None:
        if not self._entries:
            return "no GOPs were added"
        expected_first = 0
        for i in range(len(self._entries)):
            e = self._entries.get(i)
            if e is None:
                return f"GOP {i} is missing (indices must be 0..{len(self._entries) - 1}; got {sorted(self._entries)[:20]})"
            if e.first_frame != expected_first:
                return f"GOP {i} starts at frame {e.first_frame}, expected {expected_first}"
            expected_first += e.n_frames
        return None

    def close(self) -> None:
        """Write the index and footer and finish the file; CodecError if the GOPs do not tile."""
        if self._closed:
            return
        problem = self._coverage_problem()
        if problem:
            self.abort()
            raise CodecError(f"ContainerWriter.close: {problem}")
        try:
            entries = [self._entries[i] for i in range(len(self._entries))]
            table = np.array(
                [(e.index, e.first_frame, e.n_frames, e.offset, e.length, e.crc) for e in entries],
                dtype=_ENTRY,
            )
            index = _INDEX_HEAD.pack(_INDEX_MAGIC, len(entries)) + table.tobytes()
            index += _CRC.pack(_crc(index))
            n_frames = entries[-1].first_frame + entries[-1].n_frames
            index_offset = self._pos
            self._write(index)
            footer = _FOOTER.pack(_FOOTER_MAGIC, index_offset, len(index), n_frames, 0)[:-4]
            self._write(footer + _CRC.pack(_crc(footer)))
            self._file.flush()
            if self._path is not None and self._tmp is not None:
                os.fsync(self._file.fileno())
                self._file.close()
                os.replace(self._tmp, self._path)
                self._tmp = None
                _fsync_dir(self._path.parent)
        except BaseException:
            self.abort()
            raise
        self._closed = True

    def abort(self) -> None:
        """Stop without finishing: a path target is left untouched (the temp file is removed)."""
        self._closed = True
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            self._tmp = None

    def __enter__(self) -> ContainerWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Source:
    """Random access to a path, an in-memory buffer or a seekable binary file."""

    def __init__(
        self, source: str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO
    ) -> None:
        self._path: Path | None = None
        self._buf: bytes | None = None
        self._file: IO[bytes] | None = None
        if isinstance(source, (str, os.PathLike)):
            self._path = Path(source)
            try:
                self.size = self._path.stat().st_size
            except OSError as exc:
                raise BitstreamError(f"cannot open {self._path}: {exc}") from exc
        elif isinstance(source, (bytes, bytearray, memoryview)):
            self._buf = bytes(source)
            self.size = len(self._buf)
        else:
            self._file = source
            try:
                seekable = source.seekable()
            except (AttributeError, ValueError):
                seekable = False
            if not seekable:
                self._buf = source.read()
                self._file = None
                self.size = len(self._buf)
            else:
                self.size = source.seek(0, io.SEEK_END)

    def read(self, offset: int, n: int, what: str) -> bytes:
        """Exactly ``n`` bytes at ``offset`` (already checked against the size)."""
        if offset < 0 or n < 0 or offset + n > self.size:
            raise BitstreamError(
                f"{what}: {n} bytes at byte {offset} run past the end ({self.size} bytes)"
            )
        if self._buf is not None:
            data = self._buf[offset : offset + n]
        else:
            try:
                if self._path is not None:
                    with self._path.open("rb") as f:
                        f.seek(offset)
                        data = f.read(n)
                else:
                    assert self._file is not None
                    self._file.seek(offset)
                    data = self._file.read(n)
            except OSError as exc:
                raise BitstreamError(f"{what}: read error at byte {offset}: {exc}") from exc
        if len(data) != n:
            raise BitstreamError(
                f"{what}: file shrank; wanted {n} bytes at byte {offset}, got {len(data)}"
            )
        return data


class ContainerReader:
    """Random access to a ``.gsv`` (path, bytes or seekable binary file): header, index, GOPs.

    Opening checks every GOP of the index against ``limits`` (frames and pixels a GOP of its size
    may claim, the memory one frame needs): a file asking for more work than its size allows
    fails here, before anything is decoded."""

    def __init__(
        self,
        source: str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO,
        *,
        limits: DecodeLimits = DEFAULT_LIMITS,
        salvage: bool = False,
    ) -> None:
        self.limits = limits
        self.index_problem: str | None = None  # why the index was not used (salvage only)
        self._src = _Source(source)
        size = self._src.size
        if size < _MIN_SIZE:
            raise BitstreamError(
                f"container: {size} bytes is too short for a .gsv file (at least {_MIN_SIZE})"
            )
        magic, version, header_len = _PREFIX.unpack(self._src.read(0, _PREFIX.size, "file header"))
        if magic != MAGIC:
            raise BitstreamError(f"container: not a .gsv file (bad magic {magic!r} at byte 0)")
        if version != VERSION:
            raise BitstreamError(
                f"container: unsupported version {version} at byte 8 (this reader reads {VERSION})"
            )
        if header_len > MAX_HEADER_BYTES or header_len + _MIN_SIZE > size:
            raise BitstreamError(
                f"container: header length {header_len} at byte 10 does not fit the {size}-byte file"
            )
        head = self._src.read(0, _PREFIX.size + header_len + _CRC.size, "file header")
        (crc,) = _CRC.unpack(head[-4:])
        if crc != _crc(head[:-4]):
            raise BitstreamError(f"container: file header CRC mismatch at byte {len(head) - 4}")
        self.header = StreamHeader.from_json(head[_PREFIX.size : -4], _PREFIX.size)
        self._data_start = len(head)
        try:
            self._read_index(size)
        except BitstreamError as exc:
            if not salvage:
                raise
            self.index_problem = str(exc)
            self._scan_chunks(size)
        self._firsts = [e.first_frame for e in self.gops]
        self._check_limits()

    def _read_index(self, size: int) -> None:
        footer_at = size - _FOOTER.size
        fmagic, index_offset, index_length, n_frames, fcrc = _FOOTER.unpack(
            self._src.read(footer_at, _FOOTER.size, "footer")
        )
        if fmagic != _FOOTER_MAGIC:
            raise BitstreamError(
                f"container: bad footer magic {fmagic!r} at byte {footer_at} (truncated file?)"
            )
        if fcrc != _crc(_FOOTER.pack(fmagic, index_offset, index_length, n_frames, 0)[:-4]):
            raise BitstreamError(f"container: footer CRC mismatch at byte {footer_at}")
        if index_offset < self._data_start or index_offset + index_length != footer_at:
            raise BitstreamError(
                f"container: index at byte {index_offset} with {index_length} bytes does not end at the "
                f"footer (byte {footer_at}) or starts inside the header (footer at byte {footer_at})"
            )
        if index_length < _INDEX_HEAD.size + _CRC.size:
            raise BitstreamError(
                f"container: index of {index_length} bytes at byte {index_offset} is too short"
            )
        raw_index = self._src.read(index_offset, index_length, "index")
        imagic, count = _INDEX_HEAD.unpack(raw_index[: _INDEX_HEAD.size])
        if imagic != _INDEX_MAGIC:
            raise BitstreamError(f"container: bad index magic {imagic!r} at byte {index_offset}")
        if (
            count < 1
            or count > MAX_GOPS
            or index_length != _INDEX_HEAD.size + count * _ENTRY.itemsize + _CRC.size
        ):
            raise BitstreamError(
                f"container: index at byte {index_offset} claims {count} GOPs, inconsistent with its {index_length} bytes"
            )
        (icrc,) = _CRC.unpack(raw_index[-4:])
        if icrc != _crc(raw_index[:-4]):
            raise BitstreamError(
                f"container: index CRC mismatch at byte {index_offset + index_length - 4}"
            )
        table = np.frombuffer(raw_index, dtype=_ENTRY, count=count, offset=_INDEX_HEAD.size)
        self._check_table(table, index_offset, n_frames)
        self.gops: list[GopEntry] = [
            GopEntry(
                int(r["index"]),
                int(r["first"]),
                int(r["n"]),
                int(r["offset"]),
                int(r["length"]),
                int(r["crc"]),
            )
            for r in table
        ]
        self.n_frames: int = int(n_frames)

    def _scan_chunks(self, size: int) -> None:
        """Salvage: find the GOP chunks by walking them from the header on (the index or footer is
        damaged or cut off). Keeps every chunk whose header is plausible and whose frames do not
        overlap an earlier one; a damaged stretch is skipped by searching for the next chunk magic.
        ``n_frames`` becomes the end of the last GOP found."""
        found: dict[int, GopEntry] = {}
        pos = self._data_start
        data_end = size
        while pos + _CHUNK.size <= data_end:
            magic, index, first, n, length, crc = _CHUNK.unpack(
                self._src.read(pos, _CHUNK.size, "GOP chunk header")
            )
            end = pos + _CHUNK.size + length
            if magic == _CHUNK_MAGIC and n >= 1 and end <= data_end and index not in found:
                found[index] = GopEntry(index, first, n, pos, length, crc)
                pos = end
                continue
            pos = self._next_magic(pos + 1, data_end)
        entries: list[GopEntry] = []
        next_first = 0
        for i in sorted(found):  # keep GOPs in order whose frame ranges do not overlap
            e = found[i]
            if e.first_frame >= next_first and (not entries or entries[-1].index < e.index):
                entries.append(e)
                next_first = e.first_frame + e.n_frames
        if not entries:
            raise BitstreamError(
                f"container: no intact GOP chunk found to salvage ({self.index_problem})"
            )
        self.gops = entries
        self.n_frames = next_first

    def _next_magic(self, start: int, end: int, block: int = 1 << 20) -> int:
        """The offset of the next chunk magic at or after ``start``, or ``end``."""
        pos = start
        while pos < end:
            n = min(block + len(_CHUNK_MAGIC) - 1, end - pos)
            hit = self._src.read(pos, n, "salvage scan").find(_CHUNK_MAGIC)
            if hit >= 0:
                return pos + hit
            pos += block
        return end

    def _check_limits(self) -> None:
        """Every GOP's claimed frames against its payload size (:class:`DecodeLimits`)."""
        h = self.header
        self.limits.check_frame_size(h.width, h.height, "container")
        for e in self.gops:
            where = f"container: GOP {e.index} (index)"
            self.limits.check_gop(h.width, h.height, e.n_frames, e.length, where, records=False)

    def _check_table(self, t: np.ndarray, index_offset: int, n_frames: int) -> None:
        """Indices 0..G-1 in order, frames tiled 0..n_frames-1, chunks tiling the data region."""
        where = f"container: index at byte {index_offset}"
        g = len(t)
        if not np.array_equal(t["index"].astype(np.int64), np.arange(g)):
            raise BitstreamError(f"{where}: GOP indices are not 0..{g - 1} in order")
        n = t["n"].astype(np.int64)
        first = t["first"].astype(np.int64)
        if (n < 1).any() or first[0] != 0 or (first[1:] != np.cumsum(n)[:-1]).any():
            raise BitstreamError(f"{where}: GOPs do not cover consecutive frames from 0")
        if int(n.sum()) != n_frames:
            raise BitstreamError(
                f"{where}: GOPs hold {int(n.sum())} frames but the footer says {n_frames}"
            )
        offset = t["offset"].astype(np.float64)  # u64 may exceed int64; compare in float first
        length = t["length"].astype(np.float64)
        if (offset > index_offset).any() or (length > index_offset).any():
            raise BitstreamError(f"{where}: a GOP chunk lies beyond the index")
        order = np.argsort(t["offset"], kind="stable")
        starts = t["offset"][order].astype(np.int64)
        ends = starts + _CHUNK.size + t["length"][order].astype(np.int64)
        if (
            starts[0] != self._data_start
            or (starts[1:] != ends[:-1]).any()
            or ends[-1] != index_offset
        ):
            raise BitstreamError(
                f"{where}: GOP chunks do not tile bytes {self._data_start}..{index_offset} (overlap, gap or bad length)"
            )

    def read_gop(self, i: int) -> bytes:
        """The payload of GOP ``i`` after checking its chunk header against the index and its CRC."""
        if not _is_int(i) or not 0 <= i < len(self.gops):
            raise BitstreamError(
                f"container: GOP {i!r} out of range (the file has {len(self.gops)})"
            )
        e = self.gops[i]
        head = self._src.read(e.offset, _CHUNK.size, f"GOP {i} chunk header")
        if _CHUNK.unpack(head) != (
            _CHUNK_MAGIC,
            e.index,
            e.first_frame,
            e.n_frames,
            e.length,
            e.crc,
        ):
            raise BitstreamError(
                f"container: GOP {i} chunk header at byte {e.offset} disagrees with the index"
            )
        payload = self._src.read(e.offset + _CHUNK.size, e.length, f"GOP {i} payload")
        if _crc(payload) != e.crc:
            raise BitstreamError(
                f"container: GOP {i} payload CRC mismatch at byte {e.offset + _CHUNK.size}"
            )
        return payload

    def gop_for_frame(self, frame: int) -> int:
        """Position in :attr:`gops` of the GOP holding ``frame`` (0-based); the GOP index itself
        except for a salvaged file with GOPs missing."""
        if not _is_int(frame) or not 0 <= frame < self.n_frames:
            raise BitstreamError(
                f"container: frame {frame!r} out of range (the stream has {self.n_frames} frames)"
            )
        return bisect.bisect_right(self._firsts, frame) - 1

    @property
    def duration_s(self) -> float:
        return self.n_frames * self.header.fps_den / self.header.fps_num

    def __enter__(self) -> ContainerReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


@dataclass(frozen=True)
class Damage:
    """A stretch of a ``.gsv`` that could not be decoded: GOP ``gop`` (None: unknown, e.g. lost
    to truncation) covering frames ``first_frame .. first_frame + n_frames - 1`` (``n_frames``
    None: to the end of the stream, whose length is then unknown)."""

    gop: int | None
    first_frame: int
    n_frames: int | None
    reason: str

    def describe(self) -> str:
        frames = (
            f"frames {self.first_frame}..{self.first_frame + self.n_frames - 1}"
            if self.n_frames is not None
            else f"frames from {self.first_frame} on"
        )
        what = f"GOP {self.gop}" if self.gop is not None else "missing GOPs"
        return f"{what} ({frames}): {self.reason}"


def open_gsv(
    gsv: str | Path | bytes, *, limits: DecodeLimits = DEFAULT_LIMITS, salvage: bool = False
) -> tuple[ContainerReader, list[Damage]]:
    """The reader of a ``.gsv`` and, with ``salvage``, the stretches already known to be lost
    (GOPs the index names but the scan did not find, a cut-off tail)."""
    reader = ContainerReader(
        gsv if isinstance(gsv, bytes) else Path(gsv), limits=limits, salvage=salvage
    )
    damage: list[Damage] = []
    if reader.index_problem is not None:
        reason = f"not found ({reader.index_problem})"
        expected_first, expected_index = 0, 0
        for e in reader.gops:
            if e.first_frame > expected_first:
                n = e.first_frame - expected_first
                damage.append(Damage(None, expected_first, n, reason))
            expected_first, expected_index = e.first_frame + e.n_frames, e.index + 1
        damage.append(
            Damage(
                None,
                expected_first,
                None,
                f"the file ends early or its index is damaged "
                f"(GOPs from {expected_index} on, if any, are lost)",
            )
        )
    return reader, damage
