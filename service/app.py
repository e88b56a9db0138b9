"""The FastAPI application factory.

Production: ``uvicorn service.app:create_app --factory`` builds everything from
``Settings`` (database URL or the embedded server, Alembic migrations when
``auto_migrate``, storage backend). Tests inject a session factory, a storage and
a clock. Resources live under ``/v1``; ``/healthz``, ``/readyz`` and ``/metrics``
are at the root (and under ``/v1``) without auth; the OpenAPI UI is at ``/docs``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from infra.db import (
    make_engine,
    make_session_factory,
    resolve_database_url,
    run_migrations,
    shutdown_embedded,
)
from infra.settings import Settings, get_settings
from infra.storage import Storage, make_storage
from service.deps import Clock, utc_now
from service.errors import install_error_handlers
from service.metrics import HttpMetrics, make_registry
from service.middleware import BodySizeLimitMiddleware, RequestMetricsMiddleware
from service.player_static import mount_player
from service.routers import batches, callback_secret, health, jobs, me, schedules, uploads
from service.routers.uploads import MULTIPART_OVERHEAD_BYTES
from service.scheduler import run_scheduler_loop
from service.schemas import error_responses

API_PREFIX = "/v1"


def create_app(
    settings: Settings | None = None,
    *,
    session_factory: sessionmaker[Session] | None = None,
    storage: Storage | None = None,
    clock: Clock | None = None,
) -> FastAPI:
    """Build the API. Anything not injected is made from ``settings`` (default: the environment)."""
    settings = settings or get_settings()
    owned_engine: Engine | None = None
    if session_factory is None:
        url = resolve_database_url(settings)
        if settings.auto_migrate:
            run_migrations(url)
        owned_engine = make_engine(url, settings)
        session_factory = make_session_factory(owned_engine)
    if storage is None:
        storage = make_storage(settings)
    clock = clock or utc_now
    app_storage: Storage = storage
    app_factory: sessionmaker[Session] = session_factory

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task: asyncio.Task[Any] | None = None
        if settings.scheduler_interval_seconds > 0:
            task = asyncio.create_task(
                run_scheduler_loop(app_factory, app_storage, clock, settings)
            )
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if owned_engine is not None:
                owned_engine.dispose()
                # uvicorn re-raises SIGTERM after shutdown, so atexit never runs: stop the
                # embedded server (if this process started it) here
                shutdown_embedded()

    app = FastAPI(
        title="splatpack",
        summary="2D Gaussian-splat video transcoding",
        version="1",
        docs_url="/docs",
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.session_factory = session_factory
    app.state.storage = storage
    app.state.clock = clock
    app.state.metrics_registry = make_registry(session_factory)
    app.state.http_metrics = HttpMetrics(app.state.metrics_registry)

    app.add_middleware(
        BodySizeLimitMiddleware,
        default_limit=settings.max_request_json_bytes,
        limits={f"{API_PREFIX}/uploads": settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES},
    )
    app.add_middleware(RequestMetricsMiddleware, metrics=app.state.http_metrics)  # outermost
    install_error_handlers(app)

    v1 = APIRouter(prefix=API_PREFIX, responses=error_responses(400, 401, 404, 413, 422, 503))
    for module in (jobs, uploads, batches, schedules, callback_secret, me):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(health.router)
    app.include_router(health.router, prefix=API_PREFIX, include_in_schema=False)
    mount_player(app)  # the browser player at /player/ (service/player_static.py)
    return app
