"""Database plumbing against a real Postgres: embedded server, migrations, fixtures, keys, jobs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy.exc
from alembic import command
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from infra.db import (
    alembic_config,
    make_engine,
    make_session_factory,
    normalize_url,
    resolve_database_url,
    run_migrations,
    shutdown_embedded,
)
from infra.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError
from infra.jobs import create_job, create_or_get_job
from infra.models import (
    GOP_SECONDS_BUCKETS,
    JOB_STATUS_COUNT_SHARDS,
    ApiKey,
    Job,
    JobStatus,
    JobStatusCount,
    Tenant,
)
from infra.settings import Settings
from infra.tenants import authenticate, create_tenant_key, list_tenant_keys, revoke_key


@pytest.fixture
def pg_root() -> Iterator[Path]:
    """A world-searchable temp dir (as root, postgres runs as another user)."""
    root = Path(tempfile.mkdtemp(prefix="splatpack-pg-unit-"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def test_embedded_postgres_keeps_data_attaches_and_survives_a_stale_pidfile(pg_root: Path) -> None:
    data_dir = pg_root / "data"
    with EmbeddedPostgres(data_dir, durable=False) as server:
        assert server.owns_server
        with psycopg.connect(_libpq(server.url), autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        # a second handle on the same data dir attaches; its stop() leaves the server up
        other = EmbeddedPostgres(data_dir)
        assert other.start() == server.url
        assert not other.owns_server
        other.stop()
        with psycopg.connect(_libpq(server.url)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert not (data_dir / "postmaster.pid").exists()

    # a crashed run leaves postmaster.pid naming a live pid that is not postgres
    (data_dir / "postmaster.pid").write_text(
        f"{os.getpid()}\n{data_dir}\n0\n5432\n\n127.0.0.1\n0 0\nready\n"
    )
    with (
        EmbeddedPostgres(data_dir, durable=False) as server,
        psycopg.connect(_libpq(server.url)) as conn,
    ):
        assert server.owns_server
        assert conn.execute("SELECT v FROM kept").fetchall() == [(42,)]


def test_embedded_postgres_refuses_a_foreign_non_empty_dir(pg_root: Path) -> None:
    data_dir = pg_root / "data"
    data_dir.mkdir()
    (data_dir / "precious.txt").write_text("not a database")
    with pytest.raises(EmbeddedPostgresError, match="not empty"):
        EmbeddedPostgres(data_dir).start()
    assert (data_dir / "precious.txt").read_text() == "not a database"


def test_resolve_database_url_uses_settings_or_starts_embedded(pg_root: Path) -> None:
    explicit = Settings(database_url="postgresql://u:p@db.example:5433/x")
    assert resolve_database_url(explicit) == "postgresql+psycopg://u:p@db.example:5433/x"
    with pytest.raises(ValueError, match="not supported"):
        normalize_url("mysql://u@h/x")

    settings = Settings(data_dir=pg_root / "var")
    try:
        url = resolve_database_url(settings)
        assert resolve_database_url(settings) == url  # one server per process
        assert (pg_root / "var" / "pg" / "PG_VERSION").exists()
        with psycopg.connect(_libpq(url)) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("splatpack",)
    finally:
        shutdown_embedded()


def test_migrations_match_the_models_and_are_idempotent(db_url: str) -> None:
    run_migrations(db_url)  # already at head: a no-op
    command.check(alembic_config(db_url))  # raises when models and schema differ
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
            enums = set(
                conn.execute(text("SELECT typname FROM pg_type WHERE typtype = 'e'")).scalars()
            )
        assert version == "0006"
        assert {"job_status", "job_phase"} <= enums
    finally:
        engine.dispose()


def test_migrations_downgrade_to_base_and_back(db_url: str) -> None:
    command.downgrade(alembic_config(db_url), "base")
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            tables = set(
                conn.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                ).scalars()
            )
        assert tables <= {"alembic_version"}
    finally:
        engine.dispose()
    run_migrations(db_url)
    command.check(alembic_config(db_url))


def test_concurrent_migrations_are_serialised(db_url: str) -> None:
    """Processes starting at once (API + workers) all upgrade without tripping over each other."""
    command.downgrade(alembic_config(db_url), "base")
    code = "import sys; from infra.db import run_migrations; run_migrations(sys.argv[1])"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, db_url], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    command.check(alembic_config(db_url))


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_fresh_database(session_factory: sessionmaker[Session], run: int) -> None:
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Tenant)) == 0
        session.add(Tenant(name="same-name-every-run"))
        session.commit()


def test_server_defaults_allow_plain_sql_inserts(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session:
        tenant_id = uuid.uuid4()
        session.execute(text("INSERT INTO tenants (id, name) VALUES (:id, 't')"), {"id": tenant_id})
        session.execute(
            text(
                "INSERT INTO jobs (id, tenant_id, input_uri, output_prefix) VALUES (:id, :t, 'in', 'out/')"
            ),
            {"id": uuid.uuid4(), "t": tenant_id},
        )
        job = session.scalars(select(Job)).one()
        assert (job.status, job.gops_done, job.outputs, job.cancel_requested) == (
            JobStatus.queued,
            0,
            {},
            False,
        )


def test_api_keys_are_hashed_scoped_and_revocable(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session:
        key_a = create_tenant_key(session, "acme")
        key_a2 = create_tenant_key(session, "acme")
        key_b = create_tenant_key(session, "globex")
        session.commit()

    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Tenant)) == 2
        stored = [k.secret_sha256 for k in session.scalars(select(ApiKey))]
        assert all(key not in stored and len(h) == 64 for key in (key_a, key_b) for h in stored)
        tenant_a = authenticate(session, key_a)
        assert tenant_a is not None and tenant_a.name == "acme"
        assert authenticate(session, key_a2) is not None
        tenant_b = authenticate(session, key_b)
        assert tenant_b is not None and tenant_b.name == "globex"
        # right prefix, wrong secret; malformed; empty
        assert authenticate(session, key_a[:-4] + "AAAA") is None
        assert authenticate(session, "sp_nothex_x") is None
        assert authenticate(session, "") is None
        assert revoke_key(session, key_a) is True
        assert revoke_key(session, key_a) is False
        session.commit()
        assert authenticate(session, key_a) is None
        assert authenticate(session, key_a2) is not None
        assert [k.revoked_at is not None for k in list_tenant_keys(session, "acme")].count(
            True
        ) == 1
        with pytest.raises(ValueError, match="tenant name"):
            create_tenant_key(session, "../evil")


def test_create_job_builds_prefix_from_ids_and_is_idempotent(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as session:
        create_tenant_key(session, "a")
        create_tenant_key(session, "b")
        tenant_a, tenant_b = (
            session.scalars(select(Tenant).where(Tenant.name == n)).one() for n in ("a", "b")
        )
        first, created = create_or_get_job(
            session, tenant_a.id, input_uri="in.mp4", idempotency_key="k1", priority=7
        )
        assert created and first.output_prefix == f"tenants/{tenant_a.id}/jobs/{first.id}/"
        again, created_again = create_or_get_job(
            session, tenant_a.id, input_uri="other.mp4", idempotency_key="k1"
        )
        assert (again.id, created_again) == (first.id, False)
        other_tenant = create_job(session, tenant_b.id, input_uri="in.mp4", idempotency_key="k1")
        assert other_tenant.id != first.id
        no_key = create_job(session, tenant_a.id, input_uri="in.mp4")
        assert no_key.id != first.id and no_key.status == JobStatus.queued
        with pytest.raises(TypeError, match="output_prefix"):
            create_job(session, tenant_a.id, input_uri="x", output_prefix="../../etc")
        session.commit()


def test_create_job_idempotency_under_a_concurrent_race(db_url: str) -> None:
    """Two sessions insert the same key at once: one job, both get its id."""
    engine = make_engine(db_url)
    factory = make_session_factory(engine)
    try:
        with factory() as session:
            create_tenant_key(session, "racer")
            session.commit()
            tenant_id = session.scalars(select(Tenant.id)).one()
        first, second = factory(), factory()
        job_1, created_1 = create_or_get_job(
            first, tenant_id, input_uri="a", idempotency_key="same"
        )
        result: dict[str, object] = {}

        def insert_second() -> None:  # blocks on the unique index until `first` commits
            job, created = create_or_get_job(
                second, tenant_id, input_uri="a", idempotency_key="same"
            )
            result.update(id=job.id, created=created)
            second.commit()

        thread = threading.Thread(target=insert_second)
        thread.start()
        thread.join(timeout=0.5)
        assert thread.is_alive(), "the second insert should wait for the first transaction"
        first.commit()
        thread.join(timeout=30)
        assert created_1 and result == {"id": job_1.id, "created": False}
        with factory() as session:
            assert session.scalar(select(func.count()).select_from(Job)) == 1
        first.close()
        second.close()
    finally:
        engine.dispose()


def test_the_engine_pool_comes_from_settings(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = make_engine(db_url, Settings())
    try:
        assert isinstance(defaults.pool, QueuePool)
        assert (defaults.pool.size(), defaults.pool.timeout()) == (5, 30.0)
        assert defaults.pool.overflow() == -5  # max_overflow 10: counts up from -pool_size
    finally:
        defaults.dispose()

    monkeypatch.setenv("SPLATPACK_DB_POOL_SIZE", "1")
    monkeypatch.setenv("SPLATPACK_DB_MAX_OVERFLOW", "0")
    monkeypatch.setenv("SPLATPACK_DB_POOL_TIMEOUT_S", "0.2")
    tiny = make_engine(db_url, Settings())
    try:
        assert isinstance(tiny.pool, QueuePool)
        assert (tiny.pool.size(), tiny.pool.timeout()) == (1, 0.2)
        with tiny.connect():
            started = time.monotonic()
            with pytest.raises(sqlalchemy.exc.TimeoutError):
                tiny.connect()  # no overflow: the one connection is taken
            assert time.monotonic() - started < 5
    finally:
        tiny.dispose()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("db_pool_size", 0),
        ("db_max_overflow", -1),
        ("db_pool_timeout_s", 0),
        ("db_pool_size", 10_000),
    ],
)
def test_pool_settings_are_validated(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        Settings(**{field: value})


def test_a_callback_lease_must_outlast_a_try() -> None:
    with pytest.raises(ValueError, match="callback_lease_seconds"):
        Settings(callback_timeout_s=30, callback_lease_seconds=30)
    assert Settings(callback_timeout_s=30, callback_lease_seconds=31).callback_lease_seconds == 31


def test_migration_0002_counts_existing_gops_once_then_the_trigger_counts_new_ones(
    db_url: str,
) -> None:
    command.downgrade(alembic_config(db_url), "0001")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            tenant = conn.execute(
                text("INSERT INTO tenants (id, name) VALUES (gen_random_uuid(), 't') RETURNING id")
            ).scalar_one()
            job = conn.execute(
                text(
                    "INSERT INTO jobs (id, tenant_id, input_uri, output_prefix) "
                    "VALUES (gen_random_uuid(), :t, 'in.mp4', 'p/') RETURNING id"
                ),
                {"t": tenant},
            ).scalar_one()
            for index, seconds in enumerate([0.05, 0.3, 0.3, 1000.0, None]):
                conn.execute(
                    text(
                        "INSERT INTO job_gops (job_id, gop_index, first_frame, n_frames, "
                        "payload_key, payload_bytes, encode_seconds) "
                        "VALUES (:j, :i, 0, 1, 'k', 1, :s)"
                    ),
                    {"j": job, "i": index, "s": seconds},
                )
        run_migrations(db_url)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO job_gops (job_id, gop_index, first_frame, n_frames, "
                    "payload_key, payload_bytes, encode_seconds) VALUES (:j, 9, 0, 1, 'k', 1, 2.0)"
                ),
                {"j": job},
            )
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT le, observations, seconds_sum FROM gop_encode_seconds_buckets "
                    "ORDER BY le"
                )
            ).all()
    finally:
        engine.dispose()
    assert [r[0] for r in rows] == [*GOP_SECONDS_BUCKETS, float("inf")]
    counts = {r[0]: (r[1], r[2]) for r in rows if r[1]}
    assert counts == {0.1: (1, 0.05), 0.5: (2, 0.6), 2.5: (1, 2.0), float("inf"): (1, 1000.0)}


def _counted(conn: Any) -> dict[str, int]:
    """Jobs per status as ``job_status_counts`` has them (statuses with none left out)."""
    rows = conn.execute(
        text("SELECT status::text, sum(jobs) FROM job_status_counts GROUP BY status")
    ).all()
    return {status: int(n) for status, n in rows if n}


def _actual(conn: Any) -> dict[str, int]:
    rows = conn.execute(text("SELECT status::text, count(*) FROM jobs GROUP BY status")).all()
    return {status: int(n) for status, n in rows}


def test_migration_0003_backfills_counts_secrets_and_callback_queue(db_url: str) -> None:
    command.downgrade(alembic_config(db_url), "0002")
    engine = make_engine(db_url)
    insert_job = text(
        "INSERT INTO jobs (id, tenant_id, input_uri, output_prefix, status, callback_url, "
        "callback_status) VALUES (gen_random_uuid(), :t, 'in', 'p/', :s, :u, :c) RETURNING id"
    )
    try:
        with engine.begin() as conn:
            tenants = [
                conn.execute(
                    text(
                        "INSERT INTO tenants (id, name) VALUES (gen_random_uuid(), :n) RETURNING id"
                    ),
                    {"n": name},
                ).scalar_one()
                for name in ("a", "b")
            ]
            rows = [
                ("queued", None, None),
                ("queued", None, None),
                ("running", None, None),
                ("succeeded", "https://example.com/h", "delivered"),
                ("failed", "https://example.com/h", "gave_up"),
                ("canceled", "https://example.com/h", "pending"),
            ]
            ids = [
                conn.execute(
                    insert_job, {"t": tenants[0], "s": status, "u": url, "c": callback}
                ).scalar_one()
                for status, url, callback in rows
            ]
        run_migrations(db_url)
        with engine.begin() as conn:
            assert _counted(conn) == {
                "queued": 2,
                "running": 1,
                "succeeded": 1,
                "failed": 1,
                "canceled": 1,
            }
            secrets = conn.execute(text("SELECT callback_secret FROM tenants")).scalars().all()
            assert len(set(secrets)) == 2
            assert all(re.fullmatch(r"whsec_[0-9a-f]{64}", s) for s in secrets)
            callbacks = {
                row[0]: row[1:]
                for row in conn.execute(
                    text(
                        "SELECT id, callback_status, callback_attempts, callback_next_at "
                        "IS NOT NULL FROM jobs"
                    )
                )
            }
            assert callbacks[ids[3]] == ("delivered", 0, False)
            assert callbacks[ids[4]] == ("failed", 0, False)  # gave_up is now failed
            assert callbacks[ids[5]] == ("pending", 0, True)  # due now
            # from here on the triggers count: insert, status change, delete, truncate
            conn.execute(insert_job, {"t": tenants[1], "s": "queued", "u": None, "c": None})
            conn.execute(
                text("UPDATE jobs SET status = 'running' WHERE status = 'queued'")  # two rows
            )
            conn.execute(text("UPDATE jobs SET gops_done = 1"))  # not a status change
            conn.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": ids[3]})
            assert _counted(conn) == _actual(conn) == {"running": 4, "failed": 1, "canceled": 1}
            conn.execute(text("TRUNCATE jobs CASCADE"))
            assert _counted(conn) == {}
            conn.execute(insert_job, {"t": tenants[1], "s": "failed", "u": None, "c": None})
            assert _counted(conn) == {"failed": 1}
    finally:
        engine.dispose()


def test_status_counts_stay_exact_under_concurrent_transitions(
    db_url: str, session_factory: sessionmaker[Session]
) -> None:
    """Writers on their own connections flip jobs queued <-> running and end them, the
    transitions runners and the API make; no deadlock, no lost count, a bounded table."""
    with session_factory.begin() as session:
        tenant = Tenant(name="t")
        session.add(tenant)
        session.flush()
        job_ids = [
            [create_job(session, tenant.id, input_uri=f"in-{w}-{i}.mp4").id for i in range(3)]
            for w in range(4)
        ]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(job_ids))

    def work(ids: list[uuid.UUID]) -> None:
        engine = make_engine(db_url)
        try:
            barrier.wait()
            for round_ in range(15):
                for job_id in ids:
                    with engine.begin() as conn:
                        new = "running" if round_ % 2 == 0 else "queued"
                        conn.execute(
                            text("UPDATE jobs SET status = :s WHERE id = :id"),
                            {"s": new, "id": job_id},
                        )
            with engine.begin() as conn:
                conn.execute(
                    text("UPDATE jobs SET status = 'succeeded' WHERE id = :id"), {"id": ids[0]}
                )
                conn.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": ids[1]})
        except BaseException as exc:  # surfaced below (e.g. a deadlock)
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=work, args=(ids,)) for ids in job_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    with session_factory() as session:
        conn = session.connection()
        assert _counted(conn) == _actual(conn) == {"running": 4, "succeeded": 4}
        n_rows = session.scalar(select(func.count()).select_from(JobStatusCount))
        assert n_rows is not None and n_rows <= len(JobStatus) * JOB_STATUS_COUNT_SHARDS
