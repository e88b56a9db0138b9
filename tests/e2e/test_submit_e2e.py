"""From ``splatpack submit`` to decoded frames, on real components only.

The API is the production command (``uvicorn service.app:create_app --factory``)
as a subprocess on a free port, configured by environment; storage is S3 on a
moto server; the runner works in a thread of this process and fans GOPs out to
the session's local Ray cluster; Postgres is real. The client is the
``splatpack`` CLI (``frontdoor.cli.main``), which uploads over REST, follows
progress and downloads the outputs (307 redirects to presigned S3 URLs).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from codec.container import ContainerReader
from codec.gop import decode_gop
from codec.metrics import psnr_db
from codec.video import iter_frames
from frontdoor.cli import _stop_process, _wait_for_api, api_command, main
from infra.storage import S3Storage
from infra.tenants import create_tenant_key
from tests.fixtures.s3 import free_port
from tests.workers.helpers import make_video, wait_for, worker_settings
from tests.workers.receiver import Receiver
from workers.runner import Runner

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def api_server(
    tmp_path: Path, db_url: str, s3_endpoint: str, s3_bucket: str
) -> Iterator[tuple[str, S3Storage]]:
    """The real API process on S3 storage; yields its URL and a client of the same bucket."""
    storage = S3Storage(s3_bucket, endpoint_url=s3_endpoint, create_bucket=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        {
            "SPLATPACK_DATABASE_URL": db_url,
            "SPLATPACK_DATA_DIR": str(tmp_path / "api-var"),
            "SPLATPACK_STORAGE_BACKEND": "s3",
            "SPLATPACK_S3_BUCKET": s3_bucket,
            "SPLATPACK_S3_ENDPOINT_URL": s3_endpoint,
            "SPLATPACK_PUBLIC_BASE_URL": url,
            "SPLATPACK_SCHEDULER_INTERVAL_SECONDS": "0",
            "SPLATPACK_AUTO_MIGRATE": "false",
            # the callback receiver of these tests listens on 127.0.0.1
            "SPLATPACK_CALLBACK_ALLOW_PRIVATE": "true",
        }
    )
    proc = subprocess.Popen(api_command("127.0.0.1", port), cwd=REPO, env=env)
    try:
        _wait_for_api(url, proc, timeout_s=90)
        yield url, storage
    finally:
        _stop_process(proc)


@contextlib.contextmanager
def running_runner(
    tmp_path: Path,
    db_url: str,
    s3_endpoint: str,
    storage: S3Storage,
    session_factory: sessionmaker[Session],
    worker_id: str,
    **overrides: Any,
) -> Iterator[None]:
    """A real Runner on S3 storage, polling in a background thread for the block's duration."""
    settings = worker_settings(
        tmp_path,
        db_url,
        storage_backend="s3",
        s3_bucket=storage.bucket,
        s3_endpoint_url=s3_endpoint,
        **overrides,
    )
    runner = Runner(settings, session_factory, storage, worker_id=worker_id)
    stop = threading.Event()
    worker = threading.Thread(target=runner.run_forever, args=(stop,), daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join(timeout=60)


@pytest.mark.slow
def test_submit_wait_download_decode(
    ray_local: str,
    api_server: tuple[str, S3Storage],
    tmp_path: Path,
    db_url: str,
    s3_endpoint: str,
    session_factory: sessionmaker[Session],
    capsys: pytest.CaptureFixture[str],
) -> None:
    api_url, storage = api_server
    with session_factory.begin() as s:
        api_key = create_tenant_key(s, "e2e")
    src = make_video(tmp_path / "clip.mp4", n_frames=6)
    out_dir = tmp_path / "outputs"
    with running_runner(tmp_path, db_url, s3_endpoint, storage, session_factory, "e2e-runner"):
        code = main(
            [
                "submit",
                str(src),
                "--wait",
                "--api",
                api_url,
                "--key",
                api_key,
                "--gop",
                "3",
                "--quality",
                "1",
                "--out",
                str(out_dir),
                "--poll",
                "0.3",
            ]
        )
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, out
    assert "PSNR" in out
    # the progress bar (stderr) counts frames once the clip is probed, and ends at all of them
    assert "6/6" in captured.err and "frame/s" in captured.err, captured.err[-2000:]
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "manifest.json",
        "preview.mp4",
        "report.json",
        "video.gsv",
    ]

    # the bitstream decodes to the source's frame count and size, close to the source
    originals = np.stack(list(iter_frames(src)))
    with ContainerReader(out_dir / "video.gsv") as reader:
        assert reader.n_frames == 6
        decoded = np.concatenate([decode_gop(reader.read_gop(e.index)) for e in reader.gops])
    assert decoded.shape == originals.shape == (6, 32, 48, 3)
    psnrs = [psnr_db(a, b) for a, b in zip(originals, decoded, strict=True)]
    report = json.loads((out_dir / "report.json").read_text())
    assert report["psnr_db"] == pytest.approx(float(np.mean(psnrs)), abs=0.01)
    assert report["psnr_db"] > 15
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert [g["n_frames"] for g in manifest["gops"]] == [3, 3]

    # outputs live in S3 under the job's prefix; the per-GOP payloads were cleaned up
    job_id = manifest["job_id"]
    keys = storage.list_keys("tenants/")
    job_keys = [k for k in keys if f"/jobs/{job_id}/" in k]
    assert sorted(k.rsplit("/", 1)[1] for k in job_keys) == [
        "manifest.json",
        "preview.mp4",
        "report.json",
        "video.gsv",
    ]
    assert any("/uploads/" in k for k in keys)

    # the codec's own command reads the downloaded file through the same entry point
    assert main(["info", str(out_dir / "video.gsv")]) == 0
    # and the job shows up in the listing
    assert main(["jobs", "--api", api_url, "--key", api_key]) == 0
    listing = capsys.readouterr().out
    assert job_id in listing and "succeeded" in listing
    # no wall-time assertion: pytest-timeout (300 s, pyproject.toml) guards a hang, and a
    # loaded machine made a 120 s bound flake (162 s once at load 4)


@pytest.mark.slow
def test_submit_of_a_non_video_reports_the_jobs_error(
    ray_local: str,
    api_server: tuple[str, S3Storage],
    tmp_path: Path,
    db_url: str,
    s3_endpoint: str,
    session_factory: sessionmaker[Session],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A file that is not a video fails the job; `submit --wait` says why and exits 2; the
    job's callback arrives signed with the secret the API shows the tenant."""
    api_url, storage = api_server
    with session_factory.begin() as s:
        api_key = create_tenant_key(s, "e2e-bad")
    notes = tmp_path / "notes.mp4"
    notes.write_text("this is not a video\n" * 50)
    rx = Receiver([])
    try:
        with running_runner(
            tmp_path,
            db_url,
            s3_endpoint,
            storage,
            session_factory,
            "e2e-bad-runner",
            callback_allow_private=True,
        ):
            code = main(
                [
                    "submit",
                    str(notes),
                    "--wait",
                    "--api",
                    api_url,
                    "--key",
                    api_key,
                    "--poll",
                    "0.3",
                    "--callback-url",
                    rx.url,
                ]
            )
            wait_for(lambda: len(rx.bodies) == 1, 30, "the job's callback")
    finally:
        rx.close()
    err = capsys.readouterr().err
    assert code == 2
    assert "failed" in err and "input_" in err and "no details" not in err, err

    assert rx.bodies[0]["status"] == "failed" and rx.bodies[0]["error_code"].startswith("input_")
    secret = httpx.get(
        f"{api_url}/v1/callback-secret", headers={"Authorization": f"Bearer {api_key}"}
    ).json()["secret"]
    headers, raw = rx.headers[0], rx.raw_bodies[0]
    expected = hmac.new(
        secret.encode(), headers["X-Splatpack-Timestamp"].encode() + b"." + raw, hashlib.sha256
    ).hexdigest()
    assert headers["X-Splatpack-Signature"] == f"sha256={expected}"


@pytest.mark.slow
def test_submit_with_an_unreachable_target_succeeds_and_says_so(
    ray_local: str,
    api_server: tuple[str, S3Storage],
    tmp_path: Path,
    db_url: str,
    s3_endpoint: str,
    session_factory: sessionmaker[Session],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`submit --target-psnr` through the real API process, S3 on moto and local Ray: a target
    beyond the quality limits ends in a succeeded job whose report and CLI output say so."""
    api_url, storage = api_server
    with session_factory.begin() as s:
        api_key = create_tenant_key(s, "e2e-target")
    src = make_video(tmp_path / "clip.mp4", n_frames=4)
    out_dir = tmp_path / "outputs"
    with running_runner(tmp_path, db_url, s3_endpoint, storage, session_factory, "e2e-target"):
        code = main(
            [
                "submit", str(src), "--wait", "--api", api_url, "--key", api_key,
                "--gop", "2", "--target-psnr", "90", "--out", str(out_dir), "--poll", "0.3",
            ]
        )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "target 90.00 dB not reachable within the quality limits" in out
    assert "target PSNR 90.00 dB: 0/2 GOPs in [90.00, 90.50] dB" in out
    report = json.loads((out_dir / "report.json").read_text())
    assert report["target"]["gops_unreachable"] == 2
    assert [g["status"] for g in report["target"]["per_gop"]] == ["unreachable"] * 2
