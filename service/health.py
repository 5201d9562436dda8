"""Liveness, readiness and Prometheus metrics.

Metrics live in this module's own registry (not the process-global default), so building many
apps in one process (tests) never registers a metric twice. Jobs by state and queue depth are
measured at scrape time; request latency is observed by `LatencyMiddleware`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobstore.db.models import JOB_STATES
from jobstore.db.session import get_sessionmaker
from jobstore.settings import Settings

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
REQUEST_LATENCY = Histogram(
    "celif_http_request_duration_seconds",
    "Time from request to response headers, by route template",
    ["method", "route", "status"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
JOBS_BY_STATE = Gauge("celif_jobs", "Jobs by state", ["state"], registry=REGISTRY)
QUEUE_DEPTH = Gauge(
    "celif_queue_depth",
    "Messages waiting in the broker's job queue (-1: unmeasurable)",
    registry=REGISTRY,
)

router = APIRouter(tags=["health"])


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def check_database(settings: Settings) -> None:
    with get_sessionmaker(settings.database_url)() as s:
        s.execute(text("SELECT 1"))


def check_broker(settings: Settings) -> None:
    from jobstore.queue import producer_app

    app = producer_app(settings)
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a dependency is unreachable"}})
def readyz(request: Request) -> JSONResponse:
    """Readiness: the database and the broker are reachable."""
    checks: dict[str, Any] = {}
    for name, check in (
        ("database", lambda: check_database(_settings(request))),
        ("broker", lambda: check_broker(_settings(request))),
    ):
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:  # any failure means "not ready"; report it, don't crash
            checks[name] = f"error: {type(exc).__name__}: {exc}"[:300]
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus exposition: jobs by state, queue depth, request latency."""
    from jobstore.jobs import count_jobs_by_status

    try:
        with get_sessionmaker(_settings(request).database_url)() as s:
            counts = count_jobs_by_status(s)
        for state in JOB_STATES:
            JOBS_BY_STATE.labels(state=state).set(counts.get(state, 0))
    except Exception:  # a scrape must still answer when the DB is down
        log.exception("could not count jobs for /metrics")
    try:
        from jobstore.queue import queue_depth

        QUEUE_DEPTH.set(queue_depth(_settings(request)))
    except Exception:
        QUEUE_DEPTH.set(-1)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


class LatencyMiddleware:
    """Observes time to response headers per route template (not raw path: bounded labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}
        observed = False

        def observe() -> None:
            nonlocal observed
            if observed:
                return
            observed = True
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            REQUEST_LATENCY.labels(scope["method"], template, str(status["code"])).observe(
                time.perf_counter() - start
            )

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                observe()
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            observe()
