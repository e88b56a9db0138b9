"""/healthz (process up), /readyz (database and storage reachable), /metrics (Prometheus). No auth."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from service.deps import SessionFactoryDep, StorageDep
from service.metrics import render
from service.schemas import HealthPublic, ReadyPublic

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthPublic)
def healthz() -> HealthPublic:
    return HealthPublic()


@router.get("/readyz", response_model=ReadyPublic, responses={503: {"model": ReadyPublic}})
def readyz(session_factory: SessionFactoryDep, storage: StorageDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        with session_factory() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as err:
        checks["database"] = f"unreachable: {type(err).__name__}"
    try:
        storage.exists(f"readyz/{uuid.uuid4().hex}")  # a HEAD on S3; any answer means reachable
        checks["storage"] = "ok"
    except Exception as err:
        checks["storage"] = f"unreachable: {type(err).__name__}"
    ready = all(v == "ok" for v in checks.values())
    body = ReadyPublic(status="ready" if ready else "not_ready", checks=checks)
    return JSONResponse(status_code=200 if ready else 503, content=body.model_dump())


@router.get(
    "/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}}
)
def metrics(request: Request) -> Response:
    return Response(
        content=render(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST
    )
