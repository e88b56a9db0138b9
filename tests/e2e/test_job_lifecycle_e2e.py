"""A job through the real API and a real runner (local storage, real Postgres): a failed
job's message names no server path (it used to show the runner's scratch file), the
ended job is in no phase, and deleting it works. (A succeeded job's phase and progress
are checked by tests/e2e/test_serve_restart.py, deletion of outputs by
tests/service/test_hardening.py.)"""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from infra.storage import LocalStorage
from infra.tenants import create_tenant_key
from service.app import create_app
from tests.service.helpers import bearer
from tests.workers.helpers import worker_settings
from workers.runner import Runner


def test_failed_job_message_names_no_server_path(
    tmp_path: Path, db_url: str, session_factory: sessionmaker[Session]
) -> None:
    settings = worker_settings(tmp_path, db_url, scheduler_interval_seconds=0)
    storage = LocalStorage(settings.resolved_storage_root)
    runner = Runner(settings, session_factory, storage, worker_id="lifecycle")
    with session_factory.begin() as s:
        key = create_tenant_key(s, "life")
    app = create_app(settings, session_factory=session_factory, storage=storage)
    with TestClient(app) as client:

        def run(path: Path) -> dict[str, object]:
            with path.open("rb") as fh:
                up = client.post("/v1/uploads", files={"file": fh}, headers=bearer(key))
            assert up.status_code == 201, up.text
            job = client.post(
                "/v1/jobs", json={"input": up.json()["key"], "gop": 3}, headers=bearer(key)
            ).json()
            assert runner.run_once()
            got: dict[str, object] = client.get(f"/v1/jobs/{job['id']}", headers=bearer(key)).json()
            return got

        notes = tmp_path / "notes.mp4"
        notes.write_text("not a video\n" * 40)
        failed = run(notes)
        assert failed["status"] == "failed" and failed["phase"] is None
        error = failed["error"]
        assert isinstance(error, dict) and error["code"] == "input_not_video"
        message = str(error["message"])
        assert "cannot read video" in message
        for server_path in (str(tmp_path), str(settings.data_dir), "/scratch/"):
            assert server_path not in message, message

        assert client.delete(f"/v1/jobs/{failed['id']}", headers=bearer(key)).status_code == 204
