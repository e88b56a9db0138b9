"""GOP payload framing: a small header (size, frame count, quantisation grid) and the frame records.

Layout (all integers little-endian; ``varint`` is canonical unsigned LEB128, at most 5 bytes):

    magic   4 bytes  b"SPGP"
    version u8       GOP_FORMAT_VERSION (7; 1 .. 6 are still read: 1 .. 5 have no enhancer field)
    flags   u8       free for the GOP coder (codec/gop.py); carried unchanged
    height  varint   1 .. 65535
    width   varint   1 .. 65535
    n_frames varint  1 .. 10000
    grid    60 bytes QuantGrid.to_bytes()
    n_frames x frame record:
        kind   u8     0 = I, 1 = P (the first must be I)
        length varint bytes of data, at most what is left of the payload
        data   length bytes (codec.entropy intra / inter record)
    (versions 6 and 7) enhancer:
        length varint 0 (no enhancer record) .. MAX_ENHANCER_BYTES
        data   length bytes (codec.enhance.record)

Nothing may follow the last frame (versions 1 .. 5) or the enhancer field (6, 7). See docs/FORMAT.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from codec.errors import BitstreamError, DecodeLimitError

if TYPE_CHECKING:  # codec.quant (and torch) load only when a payload is parsed, so that a
    from codec.quant import QuantGrid  # reader can refuse a hostile file before loading torch

GOP_MAGIC = b"SPGP"
GOP_FORMAT_VERSION = 7  # 2: geometric Cholesky diagonal levels; 3: median-of-3 motion predictor;
# 4: refinement byte in the quantisation grid (finer P-frame levels); 5: P-frame model reuse;
# 6: enhancer field after the frame records; 7: the enhancer record may carry a per-GOP
# filter (codec/enhance/record.py flag bits 3-4), the frames are as in 6
OLDEST_GOP_FORMAT = 1  # every format since the first still decodes (tests/fixtures/gsv/)
ENHANCER_MIN_VERSION = 6  # formats before it have no enhancer field (decode as "no record")
MAX_ENHANCER_BYTES = 65_536
MAX_SIDE = 65535
MAX_GOP_FRAMES = 10_000
MIN_FRAME_RECORD_BYTES = 3  # kind, a one-byte length, and at least one byte of data
MIN_GOP_HEADER_BYTES = 4 + 2 + 3 + 59  # magic, version + flags, three varints, the smallest grid
RENDER_BYTES_PER_PIXEL = 40  # decoder peak per frame pixel: render buffers (measured ~25-44 B/px)
RENDER_BYTES_PER_GAUSSIAN = 512  # decoder working set per Gaussian (levels, floats, tile bins)


@dataclass(frozen=True)
class DecodeLimits:
    """How much work a file may make the decoder do, in proportion to its own size.

    Checked from headers and the GOP index before anything is allocated or rendered, so a small
    hostile file fails at once with :class:`BitstreamError` instead of exhausting the machine:

    - ``max_pixels_per_byte``: a GOP's claimed output (frames x width x height) per payload byte,
      beyond ``free_pixels``. Bounds the output a file may expand to. A repeated (unchanged)
      P-frame costs 4 bytes, so a static 1080p GOP of 30 frames needs ~60 bytes at the default.
    - ``max_rendered_pixels_per_byte``: the same for the frames that must be rendered (I-frames
      and P-frames that change something; an unchanged P-frame repeats the previous picture),
      again beyond ``free_pixels``. Bounds decoding time: rendering costs ~20-200 ns per pixel on a
      CPU core. 2048 px/byte is 0.004 bits per pixel, 1/25 of the 0.10 bpp carphone target.
    - ``free_pixels``: pixels every GOP may claim whatever its size (2**22: two 1080p frames, one
      4K frame), so a black or flat GOP of a few hundred bytes still decodes.
    - ``memory_budget_bytes``: the decoder's working memory for one frame, estimated as
      ``RENDER_BYTES_PER_PIXEL`` per pixel plus ``RENDER_BYTES_PER_GAUSSIAN`` per Gaussian; frames
      are decoded one at a time, so this is also the bound for a whole file. 512 MiB fits
      a 3840x2160 frame; raise it (``splatpack decode --memory-budget``) for larger ones.
    """

    max_pixels_per_byte: int = 1 << 20
    max_rendered_pixels_per_byte: int = 2048
    free_pixels: int = 1 << 22
    memory_budget_bytes: int = 512 << 20

    def check_frame_size(self, width: int, height: int, what: str) -> None:
        """BitstreamError unless one ``width`` x ``height`` frame fits the memory budget."""
        need = RENDER_BYTES_PER_PIXEL * width * height
        if need > self.memory_budget_bytes:
            raise DecodeLimitError(
                f"{what}: a {width}x{height} frame needs about {need >> 20} MiB to decode, over the "
                f"memory budget of {self.memory_budget_bytes >> 20} MiB (raise it with "
                f"--memory-budget if the file is trusted)"
            )

    def check_gaussians(self, width: int, height: int, n_gaussians: int, what: str) -> None:
        """BitstreamError unless a frame of ``n_gaussians`` fits the memory budget."""
        need = RENDER_BYTES_PER_PIXEL * width * height + RENDER_BYTES_PER_GAUSSIAN * n_gaussians
        if need > self.memory_budget_bytes:
            raise DecodeLimitError(
                f"{what}: {n_gaussians} Gaussians in a {width}x{height} frame need about "
                f"{need >> 20} MiB to decode, over the memory budget of "
                f"{self.memory_budget_bytes >> 20} MiB"
            )

    def check_gop(
        self,
        width: int,
        height: int,
        n_frames: int,
        payload_bytes: int,
        what: str,
        *,
        records: bool = True,
    ) -> None:
        """BitstreamError unless a GOP of ``payload_bytes`` may claim ``n_frames`` frames of this size:
        enough bytes for its frame records (with ``records``; the container treats payloads as
        opaque), output pixels within the per-byte bound, and one frame within the memory budget."""
        min_bytes = MIN_GOP_HEADER_BYTES + MIN_FRAME_RECORD_BYTES * n_frames
        if records and payload_bytes < min_bytes:
            raise DecodeLimitError(
                f"{what}: {n_frames} frames cannot fit in {payload_bytes} bytes "
                f"(each frame record takes at least {MIN_FRAME_RECORD_BYTES})"
            )
        pixels = n_frames * width * height
        if pixels > self.free_pixels + self.max_pixels_per_byte * payload_bytes:
            raise DecodeLimitError(
                f"{what}: {n_frames} frames of {width}x{height} ({pixels} pixels) from "
                f"{payload_bytes} bytes is more than {self.max_pixels_per_byte} pixels per byte"
            )
        self.check_frame_size(width, height, what)

    def check_rendered(
        self, width: int, height: int, n_rendered: int, payload_bytes: int, what: str
    ) -> None:
        """BitstreamError unless ``n_rendered`` frames may be rendered for ``payload_bytes``."""
        pixels = n_rendered * width * height
        if pixels > self.free_pixels + self.max_rendered_pixels_per_byte * payload_bytes:
            raise DecodeLimitError(
                f"{what}: {n_rendered} frames of {width}x{height} to render from {payload_bytes} "
                f"bytes is more than {self.max_rendered_pixels_per_byte} rendered pixels per byte "
                f"(a crafted file?)"
            )


DEFAULT_LIMITS = DecodeLimits()


class FrameKind(IntEnum):
    """How a frame record is coded: I (intra, self-contained) or P (update of the previous frame)."""

    I = 0  # noqa: E741
    P = 1
    I_NEW_GRID = (
        2  # scene-cut I-frame inside a GOP: the record starts with its own QuantGrid (60 bytes)
    )


@dataclass(frozen=True)
class GopHeader:
    """What a decoder needs before the first frame record."""

    height: int
    width: int
    n_frames: int
    grid: QuantGrid
    flags: int = 0  # u8, meaning defined by the GOP coder
    version: int = GOP_FORMAT_VERSION

    def problem(self) -> str | None:
        """What is wrong with this header, or None."""
        for name, value, hi in (
            ("height", self.height, MAX_SIDE),
            ("width", self.width, MAX_SIDE),
            ("n_frames", self.n_frames, MAX_GOP_FRAMES),
        ):
            if not isinstance(value, int) or not 1 <= value <= hi:
                return f"{name}={value!r} outside [1, {hi}]"
        if not isinstance(self.flags, int) or not 0 <= self.flags <= 255:
            return f"flags={self.flags!r} outside [0, 255]"
        if not OLDEST_GOP_FORMAT <= self.version <= GOP_FORMAT_VERSION:
            return (
                f"unsupported GOP format version {self.version} (this decoder reads "
                f"{OLDEST_GOP_FORMAT} .. {GOP_FORMAT_VERSION})"
            )
        return None


def write_varint(n: int) -> bytes:
    """Canonical unsigned LEB128 of ``0 <= n < 2**35``."""
    if not 0 <= n < 1 << 35:
        raise ValueError(f"varint value {n} outside [0, 2**35)")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(data: bytes | memoryview, pos: int, what: str) -> tuple[int, int]:
    """(value, next position) of a canonical varint (at most 5 bytes) at ``pos``."""
    value = 0
    for i in range(5):
        if pos + i >= len(data):
            raise BitstreamError(f"{what}: truncated varint at byte {pos}")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise BitstreamError(f"{what}: non-canonical varint at byte {pos}")
            return value, pos + i + 1
    raise BitstreamError(f"{what}: varint longer than 5 bytes at byte {pos}")


def pack_gop(
    header: GopHeader, frames: list[tuple[FrameKind, bytes]], enhancer: bytes = b""
) -> bytes:
    """The GOP payload; ``enhancer`` is the enhancer record (empty: none). Raises ValueError on a
    bad header, frame list or enhancer record."""
    problem = header.problem()
    if problem:
        raise ValueError(f"pack_gop: {problem}")
    if header.version != GOP_FORMAT_VERSION:
        raise ValueError(f"pack_gop: only GOP format {GOP_FORMAT_VERSION} is written")
    if len(frames) != header.n_frames:
        raise ValueError(f"pack_gop: header says {header.n_frames} frames, got {len(frames)}")
    if FrameKind(frames[0][0]) != FrameKind.I:
        raise ValueError("pack_gop: the first frame of a GOP must be an I-frame")
    out = bytearray(GOP_MAGIC)
    out += bytes([header.version, header.flags])
    out += write_varint(header.height) + write_varint(header.width) + write_varint(header.n_frames)
    out += header.grid.to_bytes()
    for kind, data in frames:
        out.append(int(FrameKind(kind)))
        out += write_varint(len(data))
        out += data
    if header.version >= ENHANCER_MIN_VERSION:
        if len(enhancer) > MAX_ENHANCER_BYTES:
            raise ValueError(f"pack_gop: enhancer record of {len(enhancer)} bytes is too long")
        out += write_varint(len(enhancer)) + enhancer
    elif enhancer:
        raise ValueError(f"pack_gop: GOP format {header.version} has no enhancer field")
    return bytes(out)


def unpack_gop(payload: bytes) -> tuple[GopHeader, list[tuple[FrameKind, bytes]]]:
    """Header and frame records of a payload (see :func:`unpack_gop_enhanced` for the enhancer
    record too); anything malformed raises BitstreamError."""
    header, frames, _ = unpack_gop_enhanced(payload)
    return header, frames


def unpack_gop_enhanced(
    payload: bytes,
) -> tuple[GopHeader, list[tuple[FrameKind, bytes]], bytes]:
    """Inverse of :func:`pack_gop`: (header, frame records, enhancer record, b"" when none or in
    format 5); anything malformed raises BitstreamError."""
    what = "GOP payload"
    data = bytes(payload)
    if len(data) < 6:
        raise BitstreamError(f"{what}: {len(data)} bytes is too short for a header")
    if data[:4] != GOP_MAGIC:
        raise BitstreamError(f"{what}: bad magic {data[:4]!r} at byte 0 (expected {GOP_MAGIC!r})")
    version, flags = data[4], data[5]
    if not OLDEST_GOP_FORMAT <= version <= GOP_FORMAT_VERSION:
        raise BitstreamError(
            f"{what}: unsupported version {version} at byte 4 (this decoder reads "
            f"{OLDEST_GOP_FORMAT} .. {GOP_FORMAT_VERSION}; a newer splatpack may read it)"
        )
    pos = 6
    height, pos = read_varint(data, pos, what)
    width, pos = read_varint(data, pos, what)
    n_frames, pos = read_varint(data, pos, what)
    from codec.quant import QuantGrid, grid_nbytes

    grid_size = grid_nbytes(version)
    if pos + grid_size > len(data):
        raise BitstreamError(f"{what}: truncated quant grid at byte {pos}")
    grid = QuantGrid.from_bytes(data[pos : pos + grid_size], version)
    pos += grid_size
    header = GopHeader(height, width, n_frames, grid, flags, version)
    problem = header.problem()
    if problem:
        raise BitstreamError(f"{what}: {problem}")
    frames: list[tuple[FrameKind, bytes]] = []
    for i in range(n_frames):
        if pos >= len(data):
            raise BitstreamError(f"{what}: frame {i} of {n_frames} missing at byte {pos}")
        kind_byte = data[pos]
        if kind_byte not in (FrameKind.I, FrameKind.P, FrameKind.I_NEW_GRID):
            raise BitstreamError(f"{what}: frame {i} has unknown kind {kind_byte} at byte {pos}")
        if i == 0 and kind_byte != FrameKind.I:
            raise BitstreamError(f"{what}: the first frame is not an I-frame (byte {pos})")
        length, pos = read_varint(data, pos + 1, what)
        if length > len(data) - pos:
            raise BitstreamError(
                f"{what}: frame {i} claims {length} bytes at byte {pos}, only {len(data) - pos} left"
            )
        frames.append((FrameKind(kind_byte), data[pos : pos + length]))
        pos += length
    enhancer = b""
    if version >= ENHANCER_MIN_VERSION:
        if pos >= len(data):
            raise BitstreamError(f"{what}: enhancer field missing at byte {pos}")
        length, pos = read_varint(data, pos, what)
        if length > MAX_ENHANCER_BYTES or length > len(data) - pos:
            raise BitstreamError(
                f"{what}: enhancer record claims {length} bytes at byte {pos}, "
                f"{len(data) - pos} left (at most {MAX_ENHANCER_BYTES})"
            )
        enhancer = data[pos : pos + length]
        pos += length
    if pos != len(data):
        raise BitstreamError(
            f"{what}: {len(data) - pos} unexpected bytes after the last record at byte {pos}"
        )
    return header, frames, enhancer
