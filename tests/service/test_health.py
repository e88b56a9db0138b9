"""/healthz, /readyz and /metrics (no auth)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from infra.db import make_engine, make_session_factory
from infra.embedded_pg import find_free_port
from infra.models import (
    GOP_SECONDS_BUCKETS,
    JOB_STATUS_COUNT_SHARDS,
    Job,
    JobGop,
    JobStatus,
    JobStatusCount,
)
from infra.settings import Settings
from infra.storage import LocalStorage
from service.app import create_app
from tests.service.helpers import FakeClock, bearer, put_upload, submit


def test_healthz_and_readyz(client: TestClient) -> None:
    for prefix in ("", "/v1"):
        assert client.get(f"{prefix}/healthz").json() == {"status": "ok"}
        ready = client.get(f"{prefix}/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "checks": {"database": "ok", "storage": "ok"}}


def test_readyz_reports_an_unreachable_database(
    settings: Settings, storage: LocalStorage, clock: FakeClock
) -> None:
    dead = make_engine(f"postgresql+psycopg://nobody:x@127.0.0.1:{find_free_port()}/none")
    app = create_app(
        settings, session_factory=make_session_factory(dead), storage=storage, clock=clock
    )
    try:
        with TestClient(app, client=("127.0.0.1", 50000)) as client:
            assert client.get("/healthz").status_code == 200
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["status"] == "not_ready"
            assert ready.json()["checks"]["database"].startswith("unreachable")
            assert ready.json()["checks"]["storage"] == "ok"
            metrics = client.get("/metrics")
            assert metrics.status_code == 200 and "splatpack_metrics_db_up 0.0" in metrics.text
    finally:
        dead.dispose()


def test_metrics_count_jobs_queue_and_gop_seconds(
    client: TestClient,
    make_key: Callable[[str], str],
    tenant_id: Callable[[str], uuid.UUID],
    storage: LocalStorage,
    session_factory: sessionmaker[Session],
) -> None:
    key = make_key("a")
    upload = put_upload(storage, tenant_id("a"))
    ids = [uuid.UUID(submit(client, key, input=upload)["id"]) for _ in range(4)]
    with session_factory() as session:
        session.execute(update(Job).where(Job.id == ids[0]).values(status=JobStatus.running))
        session.execute(update(Job).where(Job.id == ids[1]).values(status=JobStatus.succeeded))
        for index, seconds in enumerate([0.3, 4.0, 45.0]):
            session.add(
                JobGop(
                    job_id=ids[1],
                    gop_index=index,
                    first_frame=index * 30,
                    n_frames=30,
                    payload_key=f"k{index}",
                    payload_bytes=100,
                    encode_seconds=seconds,
                )
            )
        session.commit()

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    jobs = {s.labels["status"]: s.value for s in families["splatpack_jobs"].samples}
    assert jobs == {"queued": 2, "running": 1, "succeeded": 1, "failed": 0, "canceled": 0}
    assert families["splatpack_queue_depth"].samples[0].value == 2
    histogram = {
        (s.name, s.labels.get("le")): s.value
        for s in families["splatpack_gop_encode_seconds"].samples
    }
    assert histogram[("splatpack_gop_encode_seconds_bucket", "0.25")] == 0
    assert histogram[("splatpack_gop_encode_seconds_bucket", "0.5")] == 1
    assert histogram[("splatpack_gop_encode_seconds_bucket", "5.0")] == 2
    assert histogram[("splatpack_gop_encode_seconds_bucket", "60.0")] == 3
    assert histogram[("splatpack_gop_encode_seconds_bucket", "+Inf")] == 3
    assert histogram[("splatpack_gop_encode_seconds_count", None)] == 3
    assert histogram[("splatpack_gop_encode_seconds_sum", None)] == 49.3

    client.post(f"/v1/jobs/{ids[2]}/cancel", headers=bearer(key))
    again = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert again["splatpack_queue_depth"].samples[0].value == 1

    # a re-encoded GOP is one more observation; deleting a job takes none back (counters)
    with session_factory() as session:
        session.execute(
            update(JobGop)
            .where(JobGop.job_id == ids[1], JobGop.gop_index == 0)
            .values(encode_seconds=700.0)
        )
        session.execute(update(JobGop).values(psnr_db=30.0))  # not a new observation
        session.execute(delete(Job).where(Job.id == ids[1]))
        session.commit()
    later = _histogram(client)
    assert later[("splatpack_gop_encode_seconds_bucket", "0.5")] == 1
    assert later[("splatpack_gop_encode_seconds_bucket", "600.0")] == 3
    assert later[("splatpack_gop_encode_seconds_bucket", "+Inf")] == 4
    assert later[("splatpack_gop_encode_seconds_count", None)] == 4
    assert later[("splatpack_gop_encode_seconds_sum", None)] == 749.3


def _jobs_by_status(client: TestClient) -> dict[str, float]:
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    return {s.labels["status"]: s.value for s in families["splatpack_jobs"].samples}


def test_job_counts_follow_every_transition(
    client: TestClient,
    make_key: Callable[[str], str],
    tenant_id: Callable[[str], uuid.UUID],
    storage: LocalStorage,
    session_factory: sessionmaker[Session],
) -> None:
    """``splatpack_jobs`` reads the trigger-kept table: submit, claim, cancel, end, delete."""
    zero = {"queued": 0, "running": 0, "succeeded": 0, "failed": 0, "canceled": 0}
    assert _jobs_by_status(client) == zero
    key = make_key("a")
    upload = put_upload(storage, tenant_id("a"))
    ids = [uuid.UUID(submit(client, key, input=upload)["id"]) for _ in range(3)]
    assert _jobs_by_status(client) == {**zero, "queued": 3}

    def set_status(job_id: uuid.UUID, status: JobStatus) -> None:
        with session_factory.begin() as session:
            session.execute(update(Job).where(Job.id == job_id).values(status=status))

    set_status(ids[0], JobStatus.running)  # a runner claims it
    assert _jobs_by_status(client) == {**zero, "queued": 2, "running": 1}
    assert client.post(f"/v1/jobs/{ids[1]}/cancel", headers=bearer(key)).status_code == 200
    assert _jobs_by_status(client) == {**zero, "queued": 1, "running": 1, "canceled": 1}
    set_status(ids[0], JobStatus.queued)  # re-queued after an error
    set_status(ids[0], JobStatus.running)
    set_status(ids[0], JobStatus.failed)
    assert _jobs_by_status(client) == {**zero, "queued": 1, "failed": 1, "canceled": 1}
    with session_factory.begin() as session:
        session.execute(update(Job).where(Job.id == ids[0]).values(gops_done=2))  # no change
        session.execute(delete(Job).where(Job.id == ids[2]))
    assert _jobs_by_status(client) == {**zero, "failed": 1, "canceled": 1}
    with session_factory() as session:  # the table stays small: a few rows per status
        assert (
            session.scalar(select(func.count()).select_from(JobStatusCount))
            <= len(JobStatus) * JOB_STATUS_COUNT_SHARDS
        )


def _histogram(client: TestClient) -> dict[tuple[str, str | None], float]:
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    return {
        (s.name, s.labels.get("le")): s.value
        for s in families["splatpack_gop_encode_seconds"].samples
    }


def test_the_histogram_has_every_bucket_before_any_gop(client: TestClient) -> None:
    histogram = _histogram(client)
    les = [le for (name, le) in histogram if name == "splatpack_gop_encode_seconds_bucket"]
    assert les == [str(b) for b in GOP_SECONDS_BUCKETS] + ["+Inf"]
    assert set(histogram.values()) == {0}


def test_docs_and_unknown_routes(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/v1/jobs" in spec["paths"] and "/v1/jobs/{job_id}/cancel" in spec["paths"]
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong_method = client.put("/v1/jobs")
    assert (
        wrong_method.status_code == 405
        and wrong_method.json()["error"]["code"] == "method_not_allowed"
    )


def test_an_exhausted_database_pool_is_a_503_to_retry(
    settings: Settings,
    db_url: str,
    storage: LocalStorage,
    clock: FakeClock,
    make_key: Callable[[str], str],
) -> None:
    """No free connection within ``db_pool_timeout_s``: 503 ``database_busy``, not a 500."""
    key = make_key("a")
    tiny = settings.model_copy(
        update={"db_pool_size": 1, "db_max_overflow": 0, "db_pool_timeout_s": 0.2}
    )
    engine = make_engine(db_url, tiny)
    app = create_app(
        tiny, session_factory=make_session_factory(engine), storage=storage, clock=clock
    )
    try:
        with TestClient(app) as client:
            assert client.get("/v1/jobs", headers=bearer(key)).status_code == 200
            with engine.connect():  # the pool's only connection, held
                busy = client.get("/v1/jobs", headers=bearer(key))
            assert busy.status_code == 503
            assert busy.json()["error"]["code"] == "database_busy"
            assert busy.headers["Retry-After"] == "1"
            assert client.get("/v1/jobs", headers=bearer(key)).status_code == 200
    finally:
        engine.dispose()
