"""/v1/schedules and the scheduler tick, driven by an injected clock."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from infra.models import Job
from infra.settings import Settings
from infra.storage import LocalStorage
from service.app import create_app
from service.scheduler import tick
from tests.service.helpers import FAKE_VIDEO, FakeClock, bearer, error_of


def _jobs(session_factory: sessionmaker[Session]) -> list[Job]:
    with session_factory() as session:
        return list(session.scalars(select(Job).order_by(Job.input_uri)))


def test_schedule_crud_and_validation(
    client: TestClient, make_key: Callable[[str], str], tenant_id: Callable[[str], uuid.UUID]
) -> None:
    key_a, key_b = make_key("a"), make_key("b")
    prefix = f"tenants/{tenant_id('a')}/inbox/"
    created = client.post(
        "/v1/schedules",
        json={
            "cron": "*/15  * * * *",
            "input_prefix": f"s3://splatpack/{prefix}",
            "job": {"quality": 7},
        },
        headers=bearer(key_a),
    )
    assert created.status_code == 201, created.text
    schedule = created.json()
    assert schedule["cron"] == "*/15 * * * *" and schedule["input_prefix"] == prefix
    assert schedule["next_run_at"].startswith(
        "2030-01-01T12:15:00"
    )  # the injected clock says 12:00
    assert schedule["job"]["quality"] == 7

    for body, message in [
        ({"cron": "every minute", "input_prefix": prefix}, "5-field"),
        ({"cron": "* * * * * *", "input_prefix": prefix}, "5-field"),
        ({"cron": "61 * * * *", "input_prefix": prefix}, "5-field"),
        (
            {"cron": "* * * * *", "input_prefix": f"tenants/{tenant_id('b')}/"},
            "not under your area",
        ),
        ({"cron": "* * * * *", "input_prefix": prefix, "job": {"gop": 0}}, "job.gop"),
    ]:
        response = client.post("/v1/schedules", json=body, headers=bearer(key_a))
        assert response.status_code == 422, body
        assert message in error_of(response)["message"], (body, response.json())

    listed = client.get("/v1/schedules", headers=bearer(key_a)).json()
    assert listed["count"] == 1 and listed["items"][0]["id"] == schedule["id"]
    assert client.get("/v1/schedules", headers=bearer(key_b)).json()["count"] == 0
    assert client.get(f"/v1/schedules/{schedule['id']}", headers=bearer(key_b)).status_code == 404
    assert (
        client.delete(f"/v1/schedules/{schedule['id']}", headers=bearer(key_b)).status_code == 404
    )
    assert (
        client.delete(f"/v1/schedules/{schedule['id']}", headers=bearer(key_a)).status_code == 204
    )
    assert client.get(f"/v1/schedules/{schedule['id']}", headers=bearer(key_a)).status_code == 404


def test_tick_submits_each_new_input_once(
    client: TestClient,
    make_key: Callable[[str], str],
    tenant_id: Callable[[str], uuid.UUID],
    storage: LocalStorage,
    session_factory: sessionmaker[Session],
    clock: FakeClock,
    settings: Settings,
) -> None:
    key = make_key("a")
    tid = tenant_id("a")
    inbox = f"tenants/{tid}/inbox/"
    storage.put_bytes(inbox + "one.mp4", FAKE_VIDEO)
    storage.put_bytes(inbox + "readme.txt", b"not a video")
    schedule = client.post(
        "/v1/schedules",
        json={
            "cron": "0 * * * *",
            "input_prefix": inbox,
            "job": {"preset": "slow", "metadata": {"src": "cam"}},
        },
        headers=bearer(key),
    ).json()

    def run(now: datetime) -> list[Job]:
        with session_factory() as session:
            return tick(session, storage, now, settings=settings)

    assert run(clock.advance(minutes=59)) == []  # 12:59: not due yet
    first = run(clock.advance(minutes=1))  # 13:00
    assert [j.input_uri for j in first] == [inbox + "one.mp4"]
    assert first[0].schedule_id == uuid.UUID(schedule["id"])
    assert (first[0].preset, first[0].user_metadata) == ("slow", {"src": "cam"})
    assert first[0].output_prefix == f"tenants/{tid}/jobs/{first[0].id}/"

    got = client.get(f"/v1/schedules/{schedule['id']}", headers=bearer(key)).json()
    assert got["last_run_at"].startswith("2030-01-01T13:00") and got["next_run_at"].startswith(
        "2030-01-01T14:00"
    )

    assert run(clock.advance(minutes=30)) == []  # 13:30: not due
    storage.put_bytes(inbox + "two.mp4", FAKE_VIDEO)
    second = run(clock.advance(hours=3))  # 16:30: due (missed runs collapse into one)
    assert [j.input_uri for j in second] == [inbox + "two.mp4"]
    assert run(clock.advance(hours=1)) == []  # due again, nothing new
    assert [j.input_uri for j in _jobs(session_factory)] == [inbox + "one.mp4", inbox + "two.mp4"]

    # a job made for an input stays unique even if the row's schedule forgets it was run
    with session_factory() as session:
        assert (
            session.scalar(
                select(func.count()).select_from(Job).where(Job.idempotency_key.is_(None))
            )
            == 0
        )


def test_tick_caps_jobs_per_run_and_continues_next_time(
    client: TestClient,
    make_key: Callable[[str], str],
    tenant_id: Callable[[str], uuid.UUID],
    storage: LocalStorage,
    session_factory: sessionmaker[Session],
    clock: FakeClock,
    settings: Settings,
) -> None:
    key = make_key("a")
    inbox = f"tenants/{tenant_id('a')}/inbox/"
    for i in range(7):  # settings.max_batch_inputs == 5
        storage.put_bytes(f"{inbox}v{i}.mp4", FAKE_VIDEO)
    client.post(
        "/v1/schedules", json={"cron": "* * * * *", "input_prefix": inbox}, headers=bearer(key)
    )
    with session_factory() as session:
        assert len(tick(session, storage, clock.advance(minutes=1), settings=settings)) == 5
    with session_factory() as session:
        assert len(tick(session, storage, clock.advance(minutes=1), settings=settings)) == 2
    assert len(_jobs(session_factory)) == 7


def test_the_app_runs_the_scheduler_in_the_background(
    settings: Settings,
    session_factory: sessionmaker[Session],
    storage: LocalStorage,
    clock: FakeClock,
    make_key: Callable[[str], str],
    tenant_id: Callable[[str], uuid.UUID],
) -> None:
    key = make_key("a")
    inbox = f"tenants/{tenant_id('a')}/inbox/"
    storage.put_bytes(inbox + "cam.mp4", FAKE_VIDEO)
    looping = settings.model_copy(update={"scheduler_interval_seconds": 0.05})
    app = create_app(looping, session_factory=session_factory, storage=storage, clock=clock)
    with TestClient(app) as client:
        client.post(
            "/v1/schedules", json={"cron": "* * * * *", "input_prefix": inbox}, headers=bearer(key)
        )
        clock.advance(minutes=5)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not _jobs(session_factory):
            time.sleep(0.05)
    assert [j.input_uri for j in _jobs(session_factory)] == [inbox + "cam.mp4"]
