"""Salvage: whatever one damaged byte or a cut does to a .gsv, the intact GOPs decode bit-exact and
the damage is reported by GOP and frames; without salvage the decoder refuses the file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec.api import Damage, iter_decoded
from codec.container import ContainerReader, ContainerWriter
from codec.errors import BitstreamError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "gsv" / "gop_v5.gsv"


def _four_gops() -> bytes:
    reader = ContainerReader(FIXTURE)
    buf = io.BytesIO()
    with ContainerWriter(buf, reader.header) as w:
        for g in range(4):  # GOP g holds frames 3g..3g+2: the fixture's GOP g % 2
            w.add_gop(g, 3 * g, 3, reader.read_gop(g % 2))
    return buf.getvalue()


DATA = _four_gops()
REF = np.stack(list(iter_decoded(DATA)))  # [12, 29, 37, 3]


def salvaged(data: bytes) -> tuple[list[np.ndarray], list[Damage]]:
    damage: list[Damage] = []
    frames = list(iter_decoded(data, salvage=True, damage=damage))
    return frames, damage


def lost_frames(damage: list[Damage]) -> set[int]:
    lost: set[int] = set()
    for d in damage:
        lost |= set(range(d.first_frame, d.first_frame + (d.n_frames or 12 - d.first_frame)))
    return lost


def check_intact_frames_exact(frames: list[np.ndarray], damage: list[Damage]) -> None:
    kept = [i for i in range(12) if i not in lost_frames(damage)]
    assert len(frames) == len(kept)
    for frame, i in zip(frames, kept, strict=True):
        np.testing.assert_array_equal(frame, REF[i])


def test_one_damaged_gop_leaves_the_others_bit_exact() -> None:
    data = bytearray(DATA)
    e = ContainerReader(DATA).gops[2]
    data[e.offset + 28 + 5] ^= 0xFF
    with pytest.raises(BitstreamError, match="GOP 2"):
        list(iter_decoded(bytes(data)))
    frames, damage = salvaged(bytes(data))
    assert [(d.gop, d.first_frame, d.n_frames) for d in damage] == [(2, 6, 3)]
    assert "GOP 2 (frames 6..8)" in damage[0].describe()
    check_intact_frames_exact(frames, damage)


@pytest.mark.parametrize("keep", [0.5, 0.75, 0.9, 0.99])
def test_a_cut_file_gives_its_complete_gops(keep: float) -> None:
    cut = DATA[: int(len(DATA) * keep)]
    with pytest.raises(BitstreamError):
        ContainerReader(cut)
    frames, damage = salvaged(cut)
    assert len(frames) % 3 == 0 and len(frames) >= 3
    assert damage and damage[-1].n_frames is None  # the tail is reported lost
    check_intact_frames_exact(frames, damage)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(DATA) - 1), st.integers(1, 255))
def test_any_single_damaged_byte_is_salvaged_or_refused(pos: int, xor: int) -> None:
    data = bytearray(DATA)
    data[pos] ^= xor
    try:
        frames, damage = salvaged(bytes(data))
    except BitstreamError:
        return  # the stream header itself is damaged: nothing can be trusted
    check_intact_frames_exact(frames, damage)
