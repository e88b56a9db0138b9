"""GOP framing and the .gsv container: round trips, any-order writing, strict and robust reading."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec.bitstream import FrameKind, GopHeader, pack_gop, unpack_gop, write_varint
from codec.config import QuantConfig
from codec.container import ContainerReader, ContainerWriter, GopEntry, StreamHeader
from codec.errors import BitstreamError, CodecError
from codec.gaussians import Gaussians
from codec.quant import make_grid

GRID = make_grid(
    Gaussians(torch.rand(30, 2) * 64, torch.rand(30, 3) + 0.3, torch.rand(30, 3)),
    48,
    64,
    QuantConfig(),
)
HEADER = StreamHeader(
    width=64, height=48, fps_num=30000, fps_den=1001, gop=3, codec_params={"q": 5, "n": [1, 2]}
)
PAYLOADS = [b"first gop \x00\x01", b"second", b"3rd!" * 5]
FRAMES = [3, 3, 1]


def small_file(order: tuple[int, ...] = (0, 1, 2)) -> bytes:
    buf = io.BytesIO()
    with ContainerWriter(buf, HEADER) as w:
        for i in order:
            w.add_gop(i, 3 * i, FRAMES[i], PAYLOADS[i])
    return buf.getvalue()


def read_everything(data: bytes) -> list[bytes]:
    r = ContainerReader(data)
    return [r.read_gop(i) for i in range(len(r.gops))]


# ----------------------------------------------------------------------------- GOP framing


def gop_header(n: int = 3, flags: int = 0) -> GopHeader:
    return GopHeader(height=48, width=64, n_frames=n, grid=GRID, flags=flags)


def test_gop_round_trip() -> None:
    frames = [(FrameKind.I, b"intra"), (FrameKind.P, b""), (FrameKind.P, bytes(range(256)) * 3)]
    payload = pack_gop(gop_header(flags=5), frames)
    header, back = unpack_gop(payload)
    assert header == gop_header(flags=5)
    assert back == frames


def test_pack_gop_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="I-frame"):
        pack_gop(gop_header(1), [(FrameKind.P, b"x")])
    with pytest.raises(ValueError, match="frames"):
        pack_gop(gop_header(2), [(FrameKind.I, b"x")])
    with pytest.raises(ValueError, match="height"):
        pack_gop(GopHeader(0, 64, 1, GRID), [(FrameKind.I, b"x")])


def test_unpack_gop_rejects_malformed_payloads() -> None:
    good = pack_gop(gop_header(2), [(FrameKind.I, b"ab"), (FrameKind.P, b"c")])
    with pytest.raises(BitstreamError, match="magic"):
        unpack_gop(b"XXXX" + good[4:])
    with pytest.raises(BitstreamError, match="version"):
        unpack_gop(good[:4] + b"\x09" + good[5:])
    with pytest.raises(BitstreamError, match="unexpected bytes"):
        unpack_gop(good + b"\x00")
    p_first = bytearray(good)
    # the first record's kind byte (records: 00 02 'ab' | 01 01 'c' | enhancer field 00)
    p_first[-8] = FrameKind.P
    with pytest.raises(BitstreamError, match="I-frame"):
        unpack_gop(bytes(p_first))
    huge = good[:-8] + bytes([0]) + write_varint(2**34) + b"ab"
    with pytest.raises(BitstreamError, match="claims"):
        unpack_gop(huge)
    for cut in range(len(good)):
        with pytest.raises(BitstreamError):
            unpack_gop(good[:cut])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=120), st.booleans())
def test_unpack_gop_garbage_only_raises_bitstream_error(tail: bytes, with_prefix: bool) -> None:
    data = (pack_gop(gop_header(1), [(FrameKind.I, b"")])[:68] if with_prefix else b"") + tail
    try:
        header, frames = unpack_gop(data)
    except BitstreamError:
        return
    assert len(frames) == header.n_frames and frames[0][0] == FrameKind.I


# ----------------------------------------------------------------------------- container


def test_round_trip_in_memory() -> None:
    r = ContainerReader(small_file())
    assert r.header == HEADER
    assert r.n_frames == 7
    assert [r.read_gop(i) for i in range(3)] == PAYLOADS
    assert [(e.index, e.first_frame, e.n_frames, e.length) for e in r.gops] == [
        (0, 0, 3, len(PAYLOADS[0])),
        (1, 3, 3, len(PAYLOADS[1])),
        (2, 6, 1, len(PAYLOADS[2])),
    ]
    assert all(isinstance(e, GopEntry) for e in r.gops)
    assert [r.gop_for_frame(f) for f in range(7)] == [0, 0, 0, 1, 1, 1, 2]
    for bad in (-1, 7):
        with pytest.raises(BitstreamError, match="out of range"):
            r.gop_for_frame(bad)
    with pytest.raises(BitstreamError, match="out of range"):
        r.read_gop(3)


@pytest.mark.parametrize("order", [(2, 0, 1), (1, 2, 0), (2, 1, 0)])
def test_gops_may_arrive_in_any_order(order: tuple[int, ...]) -> None:
    data = small_file(order)
    assert read_everything(data) == PAYLOADS
    assert ContainerReader(data).n_frames == 7


def test_path_writer_is_atomic_and_reader_takes_paths_and_files(tmp_path: Path) -> None:
    target = tmp_path / "out.gsv"
    with ContainerWriter(target, HEADER) as w:
        w.add_gop(1, 3, 3, PAYLOADS[1])
        assert not target.exists()  # only the temp file exists while writing
        w.add_gop(0, 0, 3, PAYLOADS[0])
        w.add_gop(2, 6, 1, PAYLOADS[2])
    assert os.listdir(tmp_path) == ["out.gsv"]
    assert target.read_bytes() == small_file((1, 0, 2))
    assert [ContainerReader(str(target)).read_gop(i) for i in range(3)] == PAYLOADS
    with target.open("rb") as f:
        assert ContainerReader(f).read_gop(2) == PAYLOADS[2]


def test_missing_or_misplaced_gops_are_rejected(tmp_path: Path) -> None:
    target = tmp_path / "bad.gsv"
    with pytest.raises(CodecError, match="GOP 1 is missing"), ContainerWriter(target, HEADER) as w:
        w.add_gop(0, 0, 3, b"a")
        w.add_gop(2, 6, 1, b"c")
    assert not target.exists() and os.listdir(tmp_path) == []
    w2 = ContainerWriter(io.BytesIO(), HEADER)
    w2.add_gop(0, 0, 3, b"a")
    w2.add_gop(1, 4, 3, b"b")  # gap: frame 3 is in no GOP
    with pytest.raises(CodecError, match="starts at frame 4"):
        w2.close()
    w3 = ContainerWriter(io.BytesIO(), HEADER)
    w3.add_gop(0, 0, 3, b"a")
    with pytest.raises(CodecError, match="already added"):
        w3.add_gop(0, 0, 3, b"a")
    with pytest.raises(CodecError, match="n_frames"):
        w3.add_gop(1, 3, 0, b"b")
    with pytest.raises(CodecError, match="no GOPs"):
        ContainerWriter(io.BytesIO(), HEADER).close()


def test_exception_in_with_block_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "x.gsv"
    with pytest.raises(RuntimeError), ContainerWriter(target, HEADER) as w:
        w.add_gop(0, 0, 3, b"a")
        raise RuntimeError("encoder crashed")
    assert os.listdir(tmp_path) == []


def test_bad_stream_headers_are_rejected() -> None:
    with pytest.raises(CodecError, match="width"):
        ContainerWriter(io.BytesIO(), StreamHeader(0, 48, 30, 1, 3, {}))
    with pytest.raises(CodecError, match="JSON"):
        ContainerWriter(io.BytesIO(), StreamHeader(64, 48, 30, 1, 3, {"x": object()}))
    with pytest.raises(CodecError, match="JSON"):
        ContainerWriter(io.BytesIO(), StreamHeader(64, 48, 30, 1, 3, {"x": float("nan")}))


def test_hostile_lengths_are_rejected_against_the_file_size() -> None:
    data = bytearray(small_file())
    data[10:14] = (2**31).to_bytes(4, "little")  # header length
    with pytest.raises(BitstreamError, match="header length"):
        ContainerReader(bytes(data))
    # a footer claiming a 2**60-byte index, with a valid footer CRC
    good = small_file()
    footer = struct.pack("<4sQQQ", b"GSVF", 100, 2**60, 7)
    forged = good[:-32] + footer + struct.pack("<I", zlib.crc32(footer))
    with pytest.raises(BitstreamError, match="index at byte 100"):
        ContainerReader(forged)


def test_every_truncation_raises() -> None:
    data = small_file()
    for cut in range(len(data)):
        with pytest.raises(BitstreamError):
            read_everything(data[:cut])


def test_every_single_bit_flip_is_detected() -> None:
    data = small_file()
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(BitstreamError):
            read_everything(bytes(flipped))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8))
def test_random_corruption_only_raises_bitstream_error(edits: list[tuple[int, int]]) -> None:
    data = bytearray(small_file())
    for pos, value in edits:
        data[pos % len(data)] = value
    try:
        payloads = read_everything(bytes(data))
    except BitstreamError:
        return
    assert payloads == PAYLOADS  # edits that rewrote a byte to its own value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.integers(0, 2))
def test_random_garbage_only_raises_bitstream_error(garbage: bytes, keep: int) -> None:
    # keep 0: pure garbage; 1: a valid prefix then garbage; 2: garbage then a valid footer area
    good = small_file()
    data = garbage if keep == 0 else good[:120] + garbage if keep == 1 else garbage + good[-44:]
    with pytest.raises(BitstreamError):
        read_everything(data)
