"""A job's life through the real API and a real runner (local storage, real Postgres, the
suite's Ray): a failed job's message names no server path, an ended job is in no phase,
and deleting an ended job removes its files."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from infra.storage import LocalStorage
from infra.tenants import create_tenant_key
from service.app import create_app
from tests.service.helpers import bearer
from tests.workers.helpers import make_video, worker_settings
from workers.runner import Runner


@pytest.mark.slow
def test_failed_and_succeeded_jobs_through_api_and_runner(
    ray_local: str, tmp_path: Path, db_url: str, session_factory: sessionmaker[Session]
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

        done = run(make_video(tmp_path / "clip.mp4", n_frames=6))
        assert done["status"] == "succeeded", done
        assert done["phase"] is None and done["progress_percent"] == 100.0
        prefix = str(done["output_prefix"])
        assert storage.list_keys(prefix)
        assert client.delete(f"/v1/jobs/{done['id']}", headers=bearer(key)).status_code == 204
        assert storage.list_keys(prefix) == []
