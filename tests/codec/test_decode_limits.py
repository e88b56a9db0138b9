"""A file can only ask the decoder for work in proportion to its own size.

Crafted, CRC-valid ``.gsv`` files (the attacks of issue 10: a 281-byte file claiming an
8192x8192 frame, 10,000 frames in a few KB, ...) fail at once with BitstreamError; the
property-based test builds many such files and checks that whatever the decoder accepts stays
within :class:`codec.bitstream.DecodeLimits`, and that time and memory stay bounded."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec.api import iter_decoded
from codec.bitstream import DEFAULT_LIMITS, DecodeLimits, FrameKind, GopHeader, pack_gop
from codec.config import QuantConfig
from codec.container import ContainerReader, ContainerWriter, StreamHeader
from codec.entropy import encode_intra
from codec.errors import BitstreamError, DecodeLimitError
from codec.gaussians import Gaussians
from codec.quant import make_grid, quantize

GRID = make_grid(
    Gaussians(torch.rand(30, 2) * 64, torch.rand(30, 3) + 0.3, torch.rand(30, 3)),
    48,
    64,
    QuantConfig(),
)
EMPTY_I = (FrameKind.I, b"\x00")  # an I-frame with no Gaussians
REPEAT_P = (FrameKind.P, b"\x00\x00")  # a P-frame that changes nothing


def crafted(
    width: int,
    height: int,
    records: list[tuple[FrameKind, bytes]],
    *,
    gops: int = 1,
    index_frames: int | None = None,
    stream_size: tuple[int, int] | None = None,
) -> bytes:
    """A CRC-valid .gsv of ``gops`` identical GOPs of ``records`` (frames of width x height)."""
    payload = pack_gop(
        GopHeader(height=height, width=width, n_frames=len(records), grid=GRID), records
    )
    sw, sh = stream_size or (width, height)
    buf = io.BytesIO()
    n = index_frames or len(records)
    with ContainerWriter(buf, StreamHeader(sw, sh, 25, 1, n, {})) as w:
        for g in range(gops):
            w.add_gop(g, g * n, n, payload)
    return buf.getvalue()


CRAFTED = {
    # issue 10: 281 bytes claiming one 8192x8192 frame (2.7 GB, 6-15 s before)
    "one_8192_frame": lambda: crafted(8192, 8192, [EMPTY_I]),
    "four_8192_frames": lambda: crafted(8192, 8192, [EMPTY_I, REPEAT_P, REPEAT_P, REPEAT_P]),
    "forty_8192_frames": lambda: crafted(8192, 8192, [EMPTY_I] + [REPEAT_P] * 39),
    # 10,000 frames of 176x144 that all need rendering, from 30 KB
    "ten_thousand_rendered_frames": lambda: crafted(176, 144, [EMPTY_I] * 10_000),
    # the index claims far more frames than the GOP chunk could hold
    "index_claims_huge_gop": lambda: crafted(1024, 1024, [EMPTY_I], index_frames=10_000),
    # the GOP header disagrees with the stream header
    "gop_bigger_than_stream": lambda: crafted(2000, 2000, [EMPTY_I], stream_size=(16, 16)),
}


def decode_all(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> int:
    return sum(1 for _ in iter_decoded(data, limits=limits))


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_file_fails_fast_with_bitstream_error(name: str) -> None:
    data = CRAFTED[name]()
    assert len(data) < 40_000
    start = time.process_time()  # CPU time of this process: other load does not count
    with pytest.raises(BitstreamError) as refused:
        decode_all(data)
    if name != "gop_bigger_than_stream":  # that one is inconsistent rather than too big
        assert isinstance(refused.value, DecodeLimitError)
    assert time.process_time() - start < 1.0


def test_a_raised_memory_budget_still_bounds_the_work_by_the_file_size() -> None:
    trusting = DecodeLimits(memory_budget_bytes=8 << 30)
    with pytest.raises(BitstreamError, match="rendered pixels per byte"):
        decode_all(CRAFTED["one_8192_frame"](), trusting)
    with pytest.raises(BitstreamError, match="pixels per byte"):
        decode_all(CRAFTED["index_claims_huge_gop"](), trusting)


def test_crafted_files_stay_under_300_mb_in_a_fresh_process(tmp_path: Path) -> None:
    files = []
    for name, make in sorted(CRAFTED.items()):
        files.append(str(tmp_path / f"{name}.gsv"))
        Path(files[-1]).write_bytes(make())
    script = (
        "import json, resource, sys, time\n"
        "from codec.api import iter_decoded\n"
        "from codec.errors import BitstreamError\n"
        "import codec.gop, codec.render  # imports count as baseline\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "out = {}\n"
        "for f in sys.argv[1:]:\n"
        "    t = time.process_time()\n"
        "    try:\n"
        "        sum(1 for _ in iter_decoded(f)); out[f] = 'decoded'\n"
        "    except BitstreamError:\n"
        "        out[f] = 'refused'\n"
        "    out[f + ':s'] = time.process_time() - t\n"
        "out['peak_mb'] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, *files], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(out[f] == "refused" for f in files)
    assert all(out[f + ":s"] < 1.0 for f in files)
    assert out["peak_mb"] < 300


def test_a_static_clip_of_repeated_frames_decodes_without_rendering_them() -> None:
    """Issue 10's 40 KB file of 10,000 frames of 176x144 is, byte for byte, a legitimate static
    clip (unchanged P-frames cost 4 bytes): it decodes, repeating the picture without rendering
    it again, in a fraction of a second (it took over 100 s before)."""
    data = crafted(176, 144, [EMPTY_I] + [REPEAT_P] * 9_999)
    assert len(data) < 41_000
    start = time.process_time()
    first = None
    n = 0
    for frame in iter_decoded(data):
        first = frame if first is None else first
        assert np.array_equal(frame, first)
        n += 1
    assert n == 10_000
    assert time.process_time() - start < 3.0


def test_a_black_1080p_gop_is_within_the_default_limits() -> None:
    """The free allowance lets a flat GOP of a few hundred bytes decode at full HD."""
    data = crafted(1920, 1080, [EMPTY_I] + [REPEAT_P] * 29)
    ContainerReader(data)  # the index check passes
    assert len(data) < 1000


def test_memory_budget_is_configurable() -> None:
    data = crafted(640, 480, [EMPTY_I])
    with pytest.raises(BitstreamError, match="memory budget"):
        decode_all(data, DecodeLimits(memory_budget_bytes=1 << 20))
    assert decode_all(data) == 1


SMALL = DecodeLimits(
    max_pixels_per_byte=1 << 14,
    max_rendered_pixels_per_byte=256,
    free_pixels=1 << 14,
    memory_budget_bytes=16 << 20,
)


def _gaussian_record(n: int) -> bytes:
    g = Gaussians(torch.rand(n, 2) * 40, torch.rand(n, 3) + 0.5, torch.rand(n, 3))
    q = quantize(g, GRID)
    from codec.entropy import canonical_order

    return encode_intra(q.index(canonical_order(q)), GRID)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.integers(1, 8192),
    height=st.integers(1, 8192),
    kinds=st.lists(st.sampled_from(["I", "P", "G"]), min_size=1, max_size=300),
    gops=st.integers(1, 3),
)
def test_crafted_files_either_fail_or_stay_within_the_limits(
    width: int, height: int, kinds: list[str], gops: int
) -> None:
    gauss = _gaussian_record(5)
    records = [{"I": EMPTY_I, "P": REPEAT_P, "G": (FrameKind.I, gauss)}[k] for k in kinds]
    records[0] = records[0] if records[0][0] == FrameKind.I else EMPTY_I
    data = crafted(width, height, records, gops=gops)
    start = time.process_time()
    try:
        n = decode_all(data, SMALL)
    except BitstreamError:
        n = -1
    seconds = time.process_time() - start
    if n >= 0:  # accepted: the work was within what its size allows
        payload_bytes = (len(data) - 200) / gops
        rendered = sum(1 for r in records if r != REPEAT_P)
        assert rendered * width * height <= SMALL.free_pixels + 256 * (payload_bytes + 200)
        assert n == len(records) * gops
    assert seconds < 2.0
