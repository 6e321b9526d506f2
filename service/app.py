"""The FastAPI app factory. `uvicorn --factory service.app:create_app` or `binpose serve` run it.

Startup answers liveness at once and loads + warms the models in the background; /readyz turns 200 when all are
warm. Shutdown (SIGTERM) is uvicorn's: stop accepting, let in-flight requests finish, then drain the batchers.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ApiError, install_error_handlers
from service.metrics import Metrics, status_class
from service.routes import classify, health, models, pose, v2
from service.settings import Settings
from service.state import ServiceState

logger = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"


class BodyLimitMiddleware:
    """413 for bodies over the limit: at once from Content-Length, or while reading a body sent without one."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: str) -> ApiError:
        return ApiError(413, "body_too_large",
                        f"the body is {size} bytes; the limit is {self.max_bytes} (BINPOSE_MAX_BODY_BYTES)")  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0 or declared > self.max_bytes:
                err = self._too_large(length.decode("latin-1")) if declared > 0 else ApiError(
                    400, "bad_content_length", "Content-Length is not a non-negative integer")  # fmt: skip
                body = {"error": {"code": err.code, "message": err.message}}
                if str(scope.get("path", "")).startswith("/v2/"):
                    body = {"error": err.message}  # type: ignore[dict-item]
                await JSONResponse(body, status_code=err.status)(scope, receive, send)
                return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large(f"more than {self.max_bytes}")
            return message

        await self.app(scope, counted, send)


class ObservabilityMiddleware:
    """Request count, latency and in-flight by endpoint (route template), model and status class."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, metrics: Metrics) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.metrics = metrics
        self._compiled: list[tuple[re.Pattern[str], str]] | None = None

    def _templates(self) -> list[tuple[re.Pattern[str], str]]:
        if self._compiled is None:
            paths = ["/", *self.fastapi_app.openapi().get("paths", {})]
            self._compiled = [(compile_path(p)[0], p) for p in paths]
        return self._compiled

    def _endpoint(self, scope: Scope) -> str:
        """The route template of the request (never the raw path: labels stay few)."""
        path = str(scope.get("path", ""))
        if path.startswith("/static/"):
            return "/static"
        for pattern, template in self._templates():
            if pattern.match(path):
                return template
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = self._endpoint(scope)
        status = 500
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        gauge = self.metrics.in_flight.labels(endpoint=endpoint)
        gauge.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            gauge.dec()
            model = str(scope.get("state", {}).get("model", ""))
            labels = {"endpoint": endpoint, "model": model, "status_class": status_class(status)}
            self.metrics.requests.labels(**labels).inc()
            self.metrics.request_seconds.labels(**labels).observe(time.perf_counter() - started)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    service = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start_loading()
        yield
        logger.info("shutting down: draining the batchers")
        await service.shutdown()
        logger.info("shutdown complete")

    app = FastAPI(
        title="binpose",
        version="0.1.0",
        summary="Binary (1-bit) networks on CPUs: human pose keypoints and image classes over HTTP.",
        lifespan=lifespan,
        responses={422: {"description": "invalid fields or undecodable image"}},
    )
    app.state.service = service
    install_error_handlers(app)
    for router in (pose.router, classify.router, models.router, health.router, v2.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def demo_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    # Added last = outermost: the metrics see every answer, the 413s of the body limit included.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ObservabilityMiddleware, fastapi_app=app, metrics=service.metrics)
    return app


def app_kwargs(settings: Settings) -> dict[str, Any]:
    """uvicorn settings that belong to the service's settings."""
    return {
        "host": settings.host,
        "port": settings.port,
        "timeout_graceful_shutdown": settings.shutdown_timeout_s,
        "log_level": settings.log_level,
    }
