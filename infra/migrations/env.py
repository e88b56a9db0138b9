"""Alembic environment: online migrations only, config built by ``infra.db.alembic_config``.

A transaction-scoped advisory lock serialises concurrent upgrades (several API
or worker processes starting at once against one database).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

from infra.models import Base

MIGRATION_LOCK_ID = 0x5370_6C61  # "Spla": arbitrary, fixed advisory-lock key

target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("alembic config has no sqlalchemy.url; use infra.db.run_migrations(url)")
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                compare_type=True,
                transaction_per_migration=False,
            )
            with context.begin_transaction():
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID}
                )
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
