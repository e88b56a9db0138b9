"""Every frame of every conformance fixture rendered by the WebGL2 renderer in headless Chromium
(software GL) is within 45 dB PSNR of the Python decoder's frame."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from codec.metrics import psnr_db
from service.player_static import mount_player
from tests.player.fixtures import FIXTURE_DIR, FIXTURES

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def static_server() -> Iterator[str]:
    """The player page and the fixtures over HTTP on 127.0.0.1 (Starlette static files: ranges)."""
    app = FastAPI()
    mount_player(app)
    app.mount("/fixtures", StaticFiles(directory=FIXTURE_DIR))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "static server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_chromium_frames_match_python(name: str, static_server: str, tmp_path: Path) -> None:
    node, chromium = shutil.which("node"), shutil.which("chromium")
    assert node and chromium, "node or chromium is missing: run `make setup`"
    page = f"{static_server}/player/?src=/fixtures/{name}.gsv"
    run = subprocess.run(
        [node, str(REPO / "tests/player/browser.mjs"), page, str(tmp_path), "--all-frames"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["error"] is None, res
    assert res["first"]["renderer"] == "webgl2", res["first"]
    facts = json.loads((FIXTURE_DIR / f"{name}.json").read_text())
    t, h, w = facts["n_frames"], facts["height"], facts["width"]
    python = np.fromfile(FIXTURE_DIR / f"{name}.frames.bin", np.uint8).reshape(t, h, w, 3)
    assert [s["shown"] for s in res["seeks"]] == list(range(t))
    worst = min(
        psnr_db(np.fromfile(tmp_path / f"frame_{f}.rgb", np.uint8).reshape(h, w, 3), python[f])
        for f in range(t)
    )
    assert worst >= 45.0, f"{name}: worst frame {worst:.2f} dB"
