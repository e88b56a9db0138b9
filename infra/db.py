"""Database engine, sessions, migrations and the choice of server.

``resolve_database_url(settings)`` gives ``settings.database_url`` or starts (or
attaches to) the embedded Postgres under ``settings.data_dir / "pg"``.
``make_engine(url, settings)`` sizes its connection pool from the settings
(``db_pool_size``, ``db_max_overflow``, ``db_pool_timeout_s``).
``run_migrations(url)`` upgrades a database to the newest Alembic revision with a
programmatic config (no ``alembic.ini`` needed, so the installed package works);
concurrent callers are serialised by a Postgres advisory lock.
"""

from __future__ import annotations

import atexit
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from infra.embedded_pg import EmbeddedPostgres
from infra.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

_embedded_lock = threading.Lock()
_embedded: dict[Path, EmbeddedPostgres] = {}


def normalize_url(url: str) -> str:
    """Use the psycopg 3 driver for plain ``postgresql://`` / ``postgres://`` URLs."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername != "postgresql+psycopg":
        raise ValueError(
            f"database URL driver {parsed.drivername!r} is not supported; "
            "use postgresql+psycopg://user:password@host:port/dbname"
        )
    return parsed.render_as_string(hide_password=False)


def pool_options(settings: Settings) -> dict[str, object]:
    """The connection-pool arguments of ``create_engine`` that ``settings`` ask for."""
    return {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_timeout": settings.db_pool_timeout_s,
    }


def make_engine(url: str, settings: Settings | None = None, **kwargs: object) -> Engine:
    """An engine with pre-ping (survives server restarts) and a short connect timeout.

    With ``settings``, the pool is sized by ``db_pool_size``, ``db_max_overflow`` and
    ``db_pool_timeout_s``; without, SQLAlchemy's defaults (5, 10, 30 s) apply.
    ``kwargs`` override both.
    """
    options: dict[str, object] = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 5}}
    if settings is not None:
        options.update(pool_options(settings))
    options.update(kwargs)
    return create_engine(normalize_url(url), **options)  # type: ignore[arg-type]


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit (objects outlive requests)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    """A programmatic Alembic config for ``url`` (``%`` escaped for configparser)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def run_migrations(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision`` (idempotent; safe to run concurrently)."""
    command.upgrade(alembic_config(url), revision)


def resolve_database_url(settings: Settings) -> str:
    """``settings.database_url``, or the URL of the embedded server under ``data_dir/pg``.

    The embedded server is started once per process (or attached to when another
    process already runs it) and stopped at exit if this process started it.
    """
    if settings.database_url:
        return normalize_url(settings.database_url)
    data_dir = (settings.data_dir / "pg").absolute()
    with _embedded_lock:
        server = _embedded.get(data_dir)
        if server is None:
            server = EmbeddedPostgres(data_dir)
            server.start()
            _embedded[data_dir] = server
        return server.url


def adopt_embedded(settings: Settings) -> None:
    """Own the embedded server of ``settings.data_dir`` this process attached to (its
    starter died), so that this process stops it at exit."""
    with _embedded_lock:
        server = _embedded.get((settings.data_dir / "pg").absolute())
    if server is not None:
        server.adopt()


def shutdown_embedded() -> None:
    """Stop the embedded servers this process started (also runs at exit)."""
    with _embedded_lock:
        servers = list(_embedded.values())
        _embedded.clear()
    for server in servers:
        server.stop()


atexit.register(shutdown_embedded)
