"""Files keep playing: a ``.gsv`` of every earlier GOP format decodes to exactly the frames its
own commit's decoder produced (fixtures made by tests/fixtures/gsv/make_gsv_fixture.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from codec.bitstream import GOP_FORMAT_VERSION, FrameKind, unpack_gop
from codec.container import ContainerReader
from codec.errors import BitstreamError
from codec.gop import decode_gop

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gsv"
RECORDS: list[dict[str, Any]] = json.loads((FIXTURES / "fixtures.json").read_text())["fixtures"]


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.uint8).tobytes()).hexdigest()


def test_every_gop_format_has_a_fixture() -> None:
    assert sorted(r["gop_format"] for r in RECORDS) == list(range(1, GOP_FORMAT_VERSION + 1))
    for r in RECORDS:
        assert (FIXTURES / r["file"]).stat().st_size < 8_000  # tiny


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: f"format{r['gop_format']}")
def test_old_format_decodes_to_its_own_decoders_frames(record: dict[str, Any]) -> None:
    reader = ContainerReader(FIXTURES / record["file"])
    payloads = [reader.read_gop(i) for i in range(len(reader.gops))]
    kinds = set()
    for payload in payloads:
        assert payload[4] == record["gop_format"]  # the version byte the old writer put there
        kinds |= {kind for kind, _ in unpack_gop(payload)[1]}
    # the fixture exercises I-frames, P-frames and a scene cut with its own grid
    assert kinds == {FrameKind.I, FrameKind.P, FrameKind.I_NEW_GRID}
    frames = np.concatenate([decode_gop(p) for p in payloads])
    assert list(frames.shape) == record["shape"]
    assert [_sha(f) for f in frames] == record["frame_sha256"]
    assert _sha(frames) == record["frames_sha256"]


def test_a_future_format_is_refused_with_a_clear_error() -> None:
    payload = bytearray(ContainerReader(FIXTURES / RECORDS[-1]["file"]).read_gop(0))
    payload[4] = GOP_FORMAT_VERSION + 1
    with pytest.raises(BitstreamError, match="unsupported version"):
        decode_gop(bytes(payload))
