"""The player's conformance fixtures (tests/player/fixtures.py) against the Python decoder, and the
JS command ``player/bin/gsv-decode.mjs`` against ``splatpack decode``."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from codec.api import decode_video
from codec.metrics import psnr_db
from tests.player.fixtures import FIXTURE_DIR, FIXTURES, expected

REPO = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_committed_expectations_are_the_python_decoders(name: str) -> None:
    """The files the Node tests compare against are what this decoder produces today."""
    params, frames, facts = expected(FIXTURE_DIR / f"{name}.gsv")
    assert params == (FIXTURE_DIR / f"{name}.params.bin").read_bytes()
    assert frames.tobytes() == (FIXTURE_DIR / f"{name}.frames.bin").read_bytes()
    assert facts == json.loads((FIXTURE_DIR / f"{name}.json").read_text())


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_node_gsv_decode_writes_the_y4m_splatpack_decode_writes(name: str, tmp_path: Path) -> None:
    assert NODE, "node is missing: run `make setup`"
    src = FIXTURE_DIR / f"{name}.gsv"
    js, py = tmp_path / "js.y4m", tmp_path / "py.y4m"
    run = subprocess.run(
        [NODE, str(REPO / "player/bin/gsv-decode.mjs"), str(src), str(js)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    decode_video(src, py)
    a, b = js.read_bytes(), py.read_bytes()
    assert len(a) == len(b)
    header_len = a.index(b"\n") + 1
    assert a[:header_len] == b[:header_len]
    # same frames (within 45 dB; in practice identical) so the same Y4M bytes up to rare samples
    diff = np.frombuffer(a, np.uint8) != np.frombuffer(b, np.uint8)
    assert diff.mean() < 1e-3
    facts = json.loads((FIXTURE_DIR / f"{name}.json").read_text())
    want = np.fromfile(FIXTURE_DIR / f"{name}.frames.bin", np.uint8)
    frames = want.reshape(facts["n_frames"], facts["height"], facts["width"], 3)
    from codec.video import iter_frames

    for got, ref in zip(iter_frames(js), frames, strict=True):
        assert psnr_db(got, ref) >= 45.0


def test_node_gsv_decode_reports_a_damaged_file(tmp_path: Path) -> None:
    assert NODE, "node is missing: run `make setup`"
    bad = tmp_path / "bad.gsv"
    data = bytearray((FIXTURE_DIR / "encoded.gsv").read_bytes())
    data[200] ^= 0xFF
    bad.write_bytes(bytes(data))
    run = subprocess.run(
        [NODE, str(REPO / "player/bin/gsv-decode.mjs"), str(bad), str(tmp_path / "o.y4m")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert "CRC mismatch" in run.stderr
