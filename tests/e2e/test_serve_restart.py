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

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from frontdoor.client import SplatpackClient
from infra.serve_state import state_path
from infra.supervise import is_alive
from tests.fixtures.s3 import free_port
from tests.fixtures.serve import REPO, ServeProcess, port_open, serve_env
from tests.workers.helpers import make_video, wait_for


@pytest.mark.slow
def test_serve_killed_with_sigkill_recovers_on_restart(
    ray_local: str, serve_data_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "gop-000001").write_text("sleep 300")
    env = serve_env(
        serve_data_dir,
        port,
        ray_local,
        fault_dir=str(faults),
        lease_seconds="600",  # recovery must not wait for the lease
        heartbeat_seconds="1",
    )
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    api = f"http://127.0.0.1:{port}"
    first = ServeProcess(env)
    second: ServeProcess | None = None
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

        second = ServeProcess(env)
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
