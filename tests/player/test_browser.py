"""The player in headless Chromium (Debian's ``chromium`` driven by playwright-core) against the real
``splatpack serve``: open a finished job's video through the player page, play, seek, compare
rendered frames to the Python decoder's, and see a damaged GOP reported and skipped."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from codec.container import ContainerReader
from codec.gop import decode_gop
from codec.metrics import psnr_db
from codec.video import VideoWriter
from frontdoor.cli import _stop_process, main
from tests.fixtures.s3 import free_port
from tests.workers.helpers import TINY_CODEC, synthetic_frames

REPO = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")
CHROMIUM = shutil.which("chromium")


class _Serve:
    """``splatpack serve`` in a subprocess, its output collected by a thread."""

    def __init__(self, tmp: Path, ray_address: str, db_url: str) -> None:
        self.port = free_port()
        env = dict(
            os.environ,
            SPLATPACK_DATA_DIR=str(tmp / "var"),
            SPLATPACK_DATABASE_URL=db_url,  # the suite's real Postgres (serve migrates it)
            SPLATPACK_RAY_ADDRESS=ray_address,
            SPLATPACK_CODEC_OVERRIDES=json.dumps(TINY_CODEC),
            OMP_NUM_THREADS="1",
        )
        # public_base_url is left at its default (another port): the player must still find the
        # job's video on the server that served it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "frontdoor", "serve", "--port", str(self.port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_key(self, timeout_s: float = 180.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.lines:
                m = re.search(r"API key for tenant 'default': (\S+)", line)
                if m and any("Ctrl-C stops everything" in x for x in self.lines):
                    return m.group(1)
            assert self.proc.poll() is None, "".join(self.lines)
            time.sleep(0.2)
        raise AssertionError("serve did not start:\n" + "".join(self.lines))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _browse(page: str, out: Path, key: str, *extra: str) -> dict:
    run = subprocess.run(
        [
            NODE or "node",
            str(REPO / "tests/player/browser.mjs"),
            page,
            str(out),
            "--key",
            key,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result: dict = json.loads((out / "result.json").read_text())
    return result


@pytest.mark.slow
def test_player_plays_seeks_and_matches_python_in_chromium(
    ray_local: str, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert NODE and CHROMIUM, "node or chromium is missing: run `make setup`"
    serve = _Serve(tmp_path, ray_local, db_url)
    try:
        key = serve.wait_key()
        src = tmp_path / "clip.y4m"  # odd size: y4m carries it exactly (4:2:0 H.264 cannot)
        with VideoWriter(src, 45, 31, Fraction(10)) as writer:
            for frame in synthetic_frames(9, 45, 31):
                writer.write(frame)
        out_dir = tmp_path / "outputs"
        args = ["submit", str(src), "--wait", "--api", serve.url, "--key", key]
        args += ["--gop", "3", "--quality", "2", "--out", str(out_dir), "--poll", "0.3"]
        assert main(args) == 0, capsys.readouterr().out
        job_id = json.loads((out_dir / "manifest.json").read_text())["job_id"]
        with ContainerReader(out_dir / "video.gsv") as reader:
            assert len(reader.gops) == 3
            python = np.concatenate([decode_gop(reader.read_gop(g.index)) for g in reader.gops])
            gop1 = reader.gops[1]

        page = f"{serve.url}/player/?job={job_id}"
        res = _browse(page, tmp_path / "b1", key, "--seek", "0", "--seek", "4", "--seek", "8")
        assert res["error"] is None, res
        assert res["first"]["renderer"] == "webgl2", res["first"]
        assert res["first"]["nFrames"] == 9 and res["first"]["frame"] == 0
        assert res["played"]["frame"] > 0  # it played (10 fps for 1.5 s)
        assert res["last"]["damaged"] == []
        for s in res["seeks"]:
            f = s["asked"]
            assert s["shown"] == f
            got = np.fromfile(tmp_path / "b1" / f"frame_{f}.rgb", np.uint8).reshape(31, 45, 3)
            assert psnr_db(got, python[f]) >= 45.0, f

        # damage GOP 1 in storage: the player reports it and plays on from GOP 2
        stored = [p for p in (tmp_path / "var").rglob("video.gsv") if job_id in str(p)]
        assert len(stored) == 1
        data = bytearray(stored[0].read_bytes())
        data[gop1.offset + 28 + gop1.length // 2] ^= 0xFF
        stored[0].write_bytes(bytes(data))
        res = _browse(page, tmp_path / "b2", key, "--seek", "4", "--seek", "0", "--play-ms", "2000")
        assert res["error"] is None, res
        assert [d["gop"] for d in res["last"]["damaged"]] == [1]
        assert "CRC mismatch" in res["last"]["damaged"][0]["message"]
        assert res["seeks"][0]["shown"] == 6  # frame 4 is in the damaged GOP: on to GOP 2
        got = np.fromfile(tmp_path / "b2" / "frame_0.rgb", np.uint8).reshape(31, 45, 3)
        assert psnr_db(got, python[0]) >= 45.0
    finally:
        _stop_process(serve.proc)
