"""``kill -9`` of ``splatpack serve`` mid-job, then a plain restart: it recovers on its own.

Real processes throughout: serve (embedded Postgres, the API as a uvicorn child, a runner
on the suite's Ray cluster), a fault marker (``workers/gops.py``) that holds GOP 1 so the
kill lands mid-job, ``SIGKILL`` to serve alone. Then: its API child is gone with it (the
port is free, nothing accepts jobs that nobody runs), the restart on the same port finds
the stale state, announces itself only once its own API answers, hands the job back to
the queue at once (the lease is 10 minutes long, so waiting for it would time out), and
the job succeeds; ``keys create`` from another directory finds this server's database.
"""

from __future__ import annotations

import contextlib
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
from typing import Any

import pytest

from frontdoor.client import SplatpackClient
from infra.serve_state import state_path
from infra.supervise import is_alive
from tests.fixtures.s3 import free_port
from tests.workers.helpers import TINY_CODEC, make_video, wait_for

REPO = Path(__file__).resolve().parents[2]


class Serve:
    """One ``python -m frontdoor serve`` process with its output collected."""

    def __init__(self, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "frontdoor", "serve"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        stdout = self.proc.stdout
        assert stdout is not None
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(stdout.readline, "")))
        self.reader.start()

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_key(self, timeout_s: float = 180) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            for line in list(self.lines):
                if "API key for tenant 'default':" in line:
                    return line.rsplit(":", 1)[1].strip()
            time.sleep(0.2)
        raise AssertionError("serve printed no API key:\n" + self.output()[-4000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=10)


@pytest.fixture
def serve_data_dir() -> Iterator[Path]:
    # postgres runs as another user when we are root: its parents must be world-searchable
    root = Path(tempfile.mkdtemp(prefix="splatpack-serve-"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        stop_postgres_of(root / "pg")
        shutil.rmtree(root, ignore_errors=True)


def stop_postgres_of(pg_dir: Path) -> None:
    """Stop a postgres a failed run may have left on ``pg_dir`` (it removes its pid file)."""
    pidfile = pg_dir / "postmaster.pid"
    if not pidfile.exists():
        return
    with contextlib.suppress(ProcessLookupError, ValueError):
        os.kill(int(pidfile.read_text().splitlines()[0]), signal.SIGINT)  # fast shutdown
        wait_for(lambda: not pidfile.exists(), 30, "the left-over postgres to stop")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_serve_killed_with_sigkill_recovers_on_restart(
    ray_local: str, serve_data_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "gop-000001").write_text("sleep 300")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPLATPACK_")}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "XDG_STATE_HOME": str(tmp_path / "state"),
            "SPLATPACK_DATA_DIR": str(serve_data_dir),
            "SPLATPACK_API_PORT": str(port),
            "SPLATPACK_RAY_ADDRESS": ray_local,
            "SPLATPACK_CODEC_OVERRIDES": json.dumps(TINY_CODEC),
            "SPLATPACK_FAULT_DIR": str(faults),
            "SPLATPACK_LEASE_SECONDS": "600",  # recovery must not wait for the lease
            "SPLATPACK_HEARTBEAT_SECONDS": "1",
            "SPLATPACK_POLL_SECONDS": "0.2",
            "SPLATPACK_SCHEDULER_INTERVAL_SECONDS": "0",
        }
    )
    api = f"http://127.0.0.1:{port}"
    first = Serve(env)
    second: Serve | None = None
    try:
        key = first.wait_for_key()
        with SplatpackClient(api, key) as client:
            upload = client.upload(make_video(tmp_path / "clip.mp4", n_frames=4))
            job_id = str(client.create_job(upload["key"], gop=2, quality=1)["id"])

            def gop1_running() -> bool:
                job: dict[str, Any] = client.get_job(job_id)
                return bool(list(faults.glob("started-000001-*"))) and job["status"] == "running"

            wait_for(gop1_running, 120, "GOP 1 to start")
        api_pid = json.loads(state_path(serve_data_dir).read_text())["api_pid"]

        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(timeout=30)
        wait_for(lambda: not is_alive(api_pid), 15, "the API child to die with serve")
        wait_for(lambda: not port_open(port), 15, "the port to be free")

        second = Serve(env)
        key2 = second.wait_for_key()
        out = second.output()
        assert "1 running job(s) back in the queue" in out, out
        assert out.index("recovered from") < out.index("splatpack is serving at")
        with SplatpackClient(api, key) as client:  # the first key still works: same database
            final = client.wait(job_id, poll_s=0.3, timeout_s=120)
        assert final["status"] == "succeeded", final
        assert final["attempts"] == 2 and final["phase"] is None

        # keys from another directory find this server's database
        other_dir = tmp_path / "elsewhere"
        other_dir.mkdir()
        keys_env = {k: v for k, v in env.items() if k != "SPLATPACK_DATA_DIR"}
        made = subprocess.run(
            [sys.executable, "-m", "frontdoor", "keys", "create", "--tenant", "late"],
            cwd=other_dir,
            env={**keys_env, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert made.returncode == 0, made.stderr
        with SplatpackClient(api, made.stdout.strip()) as client:
            assert client.list_jobs(limit=1) == []
        assert key2

        second.proc.send_signal(signal.SIGINT)
        assert second.proc.wait(timeout=60) == 0, second.output()[-3000:]
        assert not state_path(serve_data_dir).exists()
        # the adopted embedded Postgres was stopped too (postgres removes its pid file)
        assert not (serve_data_dir / "pg" / "postmaster.pid").exists()
    finally:
        first.stop()
        if second is not None:
            second.stop()
