"""ASGI middleware: request body size limits, and request metrics.

Body limits are enforced while the body streams in (not after): a
``Content-Length`` over the limit is refused before reading anything; a body
without one (chunked) is counted and cut off as soon as it passes the limit.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ApiError, error_body

if TYPE_CHECKING:
    from service.metrics import HttpMetrics


class BodyTooLarge(ApiError):
    """Raised from ``receive`` once a body passes its limit (an HTTP 413)."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(
            413,
            "body_too_large",
            f"the request body is larger than the limit of {limit_bytes} bytes; send less "
            "(large videos go to POST /v1/uploads, or to a presigned PUT with S3 storage)",
        )
        self.limit_bytes = limit_bytes


class BodySizeLimitMiddleware:
    """Limit request bodies: ``limits`` maps exact paths to a limit, else ``default_limit``."""

    def __init__(self, app: ASGIApp, *, default_limit: int, limits: dict[str, int]) -> None:
        self.app = app
        self.default_limit = default_limit
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"].rstrip("/") or "/", self.default_limit)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    await self._refuse(send, BodyTooLarge(limit))
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:  # raised outside the routes' exception handlers
            if started:
                raise
            await self._refuse(send, exc)

    @staticmethod
    async def _refuse(send: Send, exc: BodyTooLarge) -> None:
        body = json.dumps(error_body(exc.code, exc.message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class RequestMetricsMiddleware:
    """Counts every HTTP request and times it, labelled by the route template that served it
    (set in the scope by FastAPI's router), else ``unmatched``."""

    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees when the app fails before answering

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, status_send)
        finally:
            self.metrics.observe(
                scope.get("method", "GET"),
                route_template(scope),
                status,
                time.perf_counter() - started,
            )


def route_template(scope: Scope) -> str:
    """The path template of the route that served ``scope`` (``/v1/jobs/{job_id}``), else
    ``unmatched``. FastAPI >= 0.16x keeps the full template of an included router's route in
    ``scope["fastapi"]["effective_route_context"]``; ``scope["route"]`` has it otherwise."""
    context = (scope.get("fastapi") or {}).get("effective_route_context")
    template = getattr(context, "path", None) or getattr(scope.get("route"), "path", None)
    return str(template) if template else "unmatched"
