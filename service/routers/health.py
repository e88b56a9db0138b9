"""/healthz (process up), /readyz (database and storage reachable) without auth; /metrics
(Prometheus) for loopback clients or the bearer of ``metrics_token``."""

from __future__ import annotations

import hmac
import ipaddress
import uuid

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from service.deps import SessionFactoryDep, SettingsDep, StorageDep
from service.errors import ApiError
from service.metrics import render
from service.schemas import HealthPublic, ReadyPublic, error_responses

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


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}},
        **error_responses(401, 403),
    },
)
def metrics(request: Request, settings: SettingsDep) -> Response:
    """Prometheus metrics. With ``SPLATPACK_METRICS_TOKEN`` set: only with
    ``Authorization: Bearer <token>``; without: only from loopback addresses."""
    token = settings.metrics_token
    if token:
        sent = request.headers.get("authorization", "")
        scheme, _, credentials = sent.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credentials.strip().encode(), token.encode()
        ):
            raise ApiError(
                401,
                "unauthorized",
                "metrics need the operator's token: send 'Authorization: Bearer <token>' "
                "(SPLATPACK_METRICS_TOKEN)",
                headers={"WWW-Authenticate": "Bearer"},
            )
    elif not _is_loopback(request.client.host if request.client else None):
        raise ApiError(
            403,
            "forbidden",
            "metrics are served to loopback clients only; the operator can set "
            "SPLATPACK_METRICS_TOKEN to let a remote scraper in with that token",
        )
    return Response(
        content=render(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST
    )
