"""The FastAPI application: `create_app(settings=None)`.

Routers of the domain packages are included here; the optional ones (predict, datasets,
dashboard) are included when their module exists, so the app runs before they land.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re

from fastapi import FastAPI, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobstore.settings import Settings, get_settings
from service import health
from service.catalog.routes import router as catalog_router
from service.errors import install_error_handlers
from service.jobs import routes as job_routes
from service.jobs import sse
from service.security import RejectNulMiddleware, SecurityHeadersMiddleware, send_json

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
# Included when present; each module defines `router`. The dashboard goes last (it serves `/`).
OPTIONAL_ROUTERS = (
    "service.predict.routes",
    "service.datasets.routes",
    "service.checkpoints.routes",
    "service.studies.routes",
    "service.workers.routes",
    "service.dashboard.routes",
)
UPLOAD_PATH_PREFIXES = (f"{API_PREFIX}/datasets", f"{API_PREFIX}/checkpoints")


class _BodyTooLarge(HTTPException):
    """Raised from `receive`; an HTTPException so FastAPI's body parsing re-raises it as is."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the limit of {limit} bytes")


class BodySizeLimitMiddleware:
    """413 for request bodies over `max_body_bytes` (`max_upload_bytes` on upload routes),
    checked on `Content-Length` first and then on the bytes actually received (chunked)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.max_upload = max_upload_bytes

    def _limit(self, path: str) -> int:
        return self.max_upload if path.startswith(UPLOAD_PATH_PREFIXES) else self.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope.get("path", ""))
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_large = int(value) > limit
                except ValueError:
                    too_large = False
                if too_large:
                    await self._reject(send, limit)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(send, limit)

    @staticmethod
    async def _reject(send: Send, limit: int) -> None:
        await send_json(send, 413, {"detail": f"request body over the limit of {limit} bytes"})


class _TooManyValues(HTTPException):
    """Raised from `receive` (FastAPI answers it as is: a 422 in the validation-error shape)."""

    def __init__(self, limit: int) -> None:
        msg = (
            f"the body holds more than {limit} values (settings.max_predict_values); "
            "send fewer sequences per request"
        )
        super().__init__(422, [{"loc": ["body", "inputs"], "msg": msg, "type": "value_error"}])


# Predict bodies are nested JSON lists; parsed, each number is a Python float (~32 bytes with
# its list slot), so a 32 MiB body could take ~1 GB before its shape is even checked.
PREDICT_PATH = re.compile(r"^/api/v1/jobs/[^/]+/(predict|streams/[^/]+/chunks)$")


NPY_TYPE = b"application/x-npy"


def _content_type(scope: Scope) -> bytes:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return value.split(b";")[0].strip().lower()
    return b""


class PredictValueLimitMiddleware:
    """422 for a predict or stream-chunk body holding more than `max_values` numbers, counted
    on the raw bytes as they arrive (values <= commas + 1), before any JSON is parsed."""

    def __init__(self, app: ASGIApp, *, max_values: int) -> None:
        self.app = app
        self.max_values = max_values

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or not PREDICT_PATH.match(scope.get("path", ""))
            or _content_type(scope) == NPY_TYPE  # binary: the NPY header is checked instead
        ):
            await self.app(scope, receive, send)
            return
        commas = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal commas
            message = await receive()
            if message["type"] == "http.request":
                commas += message.get("body", b"").count(b",")
                if commas >= self.max_values:
                    raise _TooManyValues(self.max_values)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooManyValues as exc:
            if started:
                raise
            await send_json(send, 422, {"detail": exc.detail})


def _optional_router(module_name: str):
    if importlib.util.find_spec(module_name) is None:
        return None
    return getattr(importlib.import_module(module_name), "router", None)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="CE-LIF training service",
        version="0.1.0",
        description="Train spiking neural networks built around the CE-LIF neuron over HTTP. "
        "Every /api/v1 route needs `Authorization: Bearer <token>`.",
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.sse_poll_interval_s = sse.POLL_INTERVAL_S
    app.state.sse_keepalive_s = sse.KEEPALIVE_S

    install_error_handlers(app)

    app.include_router(health.router)
    app.include_router(catalog_router)
    app.include_router(job_routes.router)
    for module_name in OPTIONAL_ROUTERS:
        router = _optional_router(module_name)
        if router is not None:
            app.include_router(router)
        else:
            log.info("optional router %s not present; skipped", module_name)

    # Middleware: the last added runs first. Latency wraps everything (413s and CORS included).
    if importlib.util.find_spec("service.predict.fastpath") is not None:
        from service.predict.fastpath import PredictFastPath

        # innermost: every middleware below still sees the predict requests it answers
        app.add_middleware(PredictFastPath, enabled=settings.predict_fast_path)
    app.add_middleware(PredictValueLimitMiddleware, max_values=settings.max_predict_values)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            expose_headers=[
                "Location",
                "Idempotent-Replayed",
                "Retry-After",
                "X-Checkpoint-SHA256",
                "X-Checkpoint-Id",
                "X-Checkpoint-Step",
                "X-Job-Id",
                "X-Predict-Kind",
                "X-Model-Cached",
                "X-Elapsed-Ms",
                "X-Firing-Rates",
            ],  # fmt: skip
        )
    app.add_middleware(RejectNulMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)  # on every response, refusals included
    app.add_middleware(health.LatencyMiddleware)
    return app
