"""The ``splatpack`` command: keys, argument errors, and ``serve`` as a real process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from frontdoor.cli import main
from frontdoor.client import SplatpackClient
from infra.tenants import authenticate
from tests.fixtures.s3 import free_port
from tests.workers.helpers import TINY_CODEC, make_video

REPO = Path(__file__).resolve().parents[2]


def test_keys_create_prints_a_working_key(
    db_url: str,
    session_factory: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SPLATPACK_DATABASE_URL", db_url)
    assert main(["keys", "create", "--tenant", "acme"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("sp_")
    with session_factory() as s:
        tenant = authenticate(s, key)
        assert tenant is not None and tenant.name == "acme"


def test_user_mistakes_exit_2_with_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", str(tmp_path / "missing.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "missing.mp4" in err
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2


def test_api_errors_are_reported_not_raised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:  # nothing listens here
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["jobs", "--api", f"http://127.0.0.1:{port}", "--key", "sp_x"])
    assert code == 2
    assert capsys.readouterr().err.startswith("error:")


@pytest.fixture
def serve_data_dir() -> Iterator[Path]:
    # postgres runs as another user when we are root: its parents must be world-searchable
    root = Path(tempfile.mkdtemp(prefix="splatpack-serve-"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_serve_runs_everything_and_stops_cleanly_on_ctrl_c(
    ray_local: str, serve_data_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = dict(os.environ)
    for name in list(env):
        if name.startswith("SPLATPACK_"):
            del env[name]
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "SPLATPACK_DATA_DIR": str(serve_data_dir),
            "SPLATPACK_API_PORT": str(port),
            "SPLATPACK_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "SPLATPACK_RAY_ADDRESS": ray_local,  # join the suite's cluster instead of a second one
            "SPLATPACK_CODEC_OVERRIDES": json.dumps(TINY_CODEC),
            "SPLATPACK_POLL_SECONDS": "0.2",
            "SPLATPACK_SCHEDULER_INTERVAL_SECONDS": "0",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "frontdoor", "serve"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    stdout = proc.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")))
    reader.start()
    try:
        deadline = time.monotonic() + 180
        key = None
        while key is None and time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            for line in list(lines):
                if "API key for tenant 'default':" in line:
                    key = line.rsplit(":", 1)[1].strip()
            time.sleep(0.2)
        assert key, "serve did not print an API key:\n" + "".join(lines[-40:])

        api = f"http://127.0.0.1:{port}"
        with SplatpackClient(api, key) as client:
            upload = client.upload(make_video(tmp_path / "clip.mp4", n_frames=4))
            job = client.create_job(upload["key"], gop=2, quality=1)
            final = client.wait(str(job["id"]), poll_s=0.3, timeout_s=120)
            assert final["status"] == "succeeded", final
            files = client.download_outputs(final, tmp_path / "out")
        assert sorted(f.name for f in files) == [
            "manifest.json",
            "preview.mp4",
            "report.json",
            "video.gsv",
        ]

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "".join(lines[-40:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    with socket.socket() as sock:  # the API subprocess is gone too
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    # the embedded Postgres kept its data and was shut down (postgres removes its pid file)
    assert (serve_data_dir / "pg" / "PG_VERSION").exists()
    assert not (serve_data_dir / "pg" / "postmaster.pid").exists()
