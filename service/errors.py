"""One error shape for every failure: ``{"error": {"code", "message", "details"?}}``.

Messages say what was wrong and what to do about it. Validation errors list each
bad field; malformed JSON is a 400; bodies over the size limit are a 413; no free
database connection within ``db_pool_timeout_s`` is a 503 ``database_busy`` and
an unreachable database a 503 ``database_unavailable`` (both with Retry-After).
A value the database refuses (``DataError``: out of range, bad text) is a 422
that names the column when Postgres does; a unique-constraint race a 409. Any
other failure is a 500 that says ``Connection: close``: the server closes the
connection after it, and a client must know not to reuse it.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

_log = logging.getLogger(__name__)

_CODES_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    503: "unavailable",
}


class ApiError(StarletteHTTPException):
    """An error with a stable machine-readable ``code`` and a human ``message``."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.code = code
        self.message = message
        self.details = details


def not_found(kind: str, ident: object) -> ApiError:
    """The same answer for "missing" and "another tenant's" (never 403)."""
    return ApiError(404, "not_found", f"{kind} {ident} not found")


def error_body(
    code: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def _error_field(error: dict[str, Any]) -> str:
    """The field an error is about; a body-level check names the value inside in its ctx."""
    where = _field_name(error.get("loc", ()))
    inner = (error.get("ctx") or {}).get("field") if error.get("type") == "unstorable_value" else ""
    if not inner:
        return where
    return inner if where == "body" else f"{where}.{inner}"


def _describe(error: dict[str, Any]) -> str:
    message = str(error.get("msg", "invalid value"))
    kind = str(error.get("type", ""))
    if kind == "unstorable_value":
        return str((error.get("ctx") or {}).get("problem", message))
    if kind == "missing":
        return "is required"
    if kind in ("literal_error", "enum", "greater_than_equal", "less_than_equal", "url_scheme"):
        return f"{message} (got {error.get('input')!r})"
    return message


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    for error in errors:
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "invalid JSON")
            loc = error.get("loc") or ()
            where = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
            return JSONResponse(
                status_code=400,
                content=error_body(
                    "malformed_json",
                    f"the request body is not valid JSON ({reason}{where}); "
                    "send a JSON object with Content-Type: application/json",
                ),
            )
    details = [{"field": _error_field(error), "message": _describe(error)} for error in errors]
    message = "; ".join(f"{d['field']}: {d['message']}" for d in details) or "invalid request"
    return JSONResponse(
        status_code=422,
        content=jsonable_encoder(error_body("validation_error", message, details)),
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into the one JSON shape."""

    async def on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return validation_error_response(exc)

    async def on_http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if isinstance(exc, ApiError):
            body = error_body(exc.code, exc.message, exc.details)
        else:
            code = _CODES_BY_STATUS.get(exc.status_code, "error")
            message = str(exc.detail)
            if exc.status_code == 404 and message == "Not Found":
                message = "no such endpoint; see /docs for the API"
            elif exc.status_code == 405:
                message = "method not allowed on this endpoint; see /docs for the API"
            body = error_body(code, message)
        return JSONResponse(status_code=exc.status_code, content=body, headers=exc.headers)

    def unavailable(code: str, message: str, retry_after_s: int) -> JSONResponse:
        return JSONResponse(
            status_code=503,
            content=error_body(code, message),
            headers={"Retry-After": str(retry_after_s)},
        )

    async def on_pool_timeout(_request: Request, exc: Exception) -> JSONResponse:
        _log.warning("database pool exhausted: %s", exc)
        return unavailable(
            "database_busy",
            "the service is busy (no free database connection); retry in a moment",
            1,
        )

    async def on_database_down(_request: Request, exc: Exception) -> JSONResponse:
        _log.warning("database unavailable: %s", exc)
        return unavailable(
            "database_unavailable",
            "the service cannot reach its database; retry later or contact the operator",
            5,
        )

    async def on_data_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, sqlalchemy.exc.DataError)
        _log.info("database refused a value: %s", exc.orig)
        column = getattr(getattr(exc.orig, "diag", None), "column_name", None)
        first_line = str(exc.orig).strip().splitlines()[0] if exc.orig else "invalid value"
        where = f"field {column!r}: " if column else ""
        return JSONResponse(
            status_code=422,
            content=error_body(
                "validation_error",
                f"{where}the database cannot store a value of this request ({first_line}); "
                "send a smaller number or plain text",
                [{"field": column or "body", "message": first_line}],
            ),
        )

    async def on_integrity_error(_request: Request, exc: Exception) -> JSONResponse:
        _log.info("integrity error: %s", exc)
        return JSONResponse(
            status_code=409,
            content=error_body("conflict", "the request conflicts with a concurrent one; retry it"),
        )

    async def on_unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
        _log.exception("unhandled error", exc_info=exc)
        # the server drops the connection after an unhandled error: say so, so that the
        # client does not send its next request down a closed keep-alive connection
        return JSONResponse(
            status_code=500,
            content=error_body(
                "internal_error", "internal error; retry later or contact the operator"
            ),
            headers={"Connection": "close"},
        )

    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(sqlalchemy.exc.TimeoutError, on_pool_timeout)
    app.add_exception_handler(sqlalchemy.exc.OperationalError, on_database_down)
    app.add_exception_handler(sqlalchemy.exc.DataError, on_data_error)
    app.add_exception_handler(sqlalchemy.exc.IntegrityError, on_integrity_error)
    app.add_exception_handler(Exception, on_unexpected_error)
