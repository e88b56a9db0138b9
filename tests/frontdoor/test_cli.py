"""The ``splatpack`` command: keys, argument errors, and ``serve`` as a real process."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from frontdoor.cli import main
from frontdoor.client import SplatpackClient
from infra.tenants import authenticate
from tests.fixtures.s3 import free_port
from tests.fixtures.serve import ServeProcess, port_open, serve_env
from tests.workers.helpers import make_video


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


@pytest.mark.slow
def test_serve_runs_everything_and_stops_cleanly_on_ctrl_c(
    ray_local: str, serve_data_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = serve_env(serve_data_dir, port, ray_local, public_base_url=f"http://127.0.0.1:{port}")
    serve = ServeProcess(env)
    try:
        key = serve.wait_for_key()
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

        serve.proc.send_signal(signal.SIGINT)
        assert serve.proc.wait(timeout=60) == 0, serve.output()[-3000:]
    finally:
        serve.stop()
    assert not port_open(port)  # the API subprocess is gone too
    # the embedded Postgres kept its data and was shut down (postgres removes its pid file)
    assert (serve_data_dir / "pg" / "PG_VERSION").exists()
    assert not (serve_data_dir / "pg" / "postmaster.pid").exists()
