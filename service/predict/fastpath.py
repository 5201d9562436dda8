"""A lean path for `POST /api/v1/jobs/{id}/predict`: the same answer as the route, with less
Python per request.

Profiled under one client (docs/benchmarks.md, Predict latency), a quarter of the event loop's
CPU per request went to FastAPI's machinery around the route: matching ~60 routes, solving its
dependencies (bearer scheme, settings, runtime), the request/response wrappers. This ASGI
middleware, the innermost (every other middleware still runs: body and value limits, NUL
checks, security headers, latency metrics), answers a predict request itself when all it
needs is cached: the token's user (`auth_cache_ttl_s`) and the job's spec and checkpoint
(`predict_lookup_ttl_s`), the same bounded staleness as the route. It calls the same pieces
as the route (`read_predict_request`, `cached_target`, `run_predict`) and renders the body as
FastAPI renders the route's `response_model` (validated, then dumped by pydantic-core).

Anything else goes to the route with the body replayed: a cache miss, a missing or unknown
token, a malformed body, a 422, a full queue. So every refusal, its status and its body, is the
route's own; the fast path only ever sends a 200. `settings.predict_fast_path` turns it off.
"""

from __future__ import annotations

import re
import time
from typing import Any

from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth.service import hash_token
from service.deps import token_cache
from service.predict import service
from service.predict.schemas import PredictResponse

PREDICT_PATH = re.compile(r"^/api/v1/jobs/([^/]+)/predict$")
ROUTE_PATH = "/api/v1/jobs/{job_id}/predict"
RESPONSE = TypeAdapter(PredictResponse)


class Miss(Exception):
    """Something the fast path does not serve: the route answers instead."""


def render_json(result: dict[str, Any]) -> Response:
    """The route's JSON answer, rendered as FastAPI renders its `response_model`."""
    value = RESPONSE.validate_python(result, from_attributes=True)
    return Response(RESPONSE.dump_json(value, by_alias=True), media_type="application/json")


async def serve_cached(request: Request, job_id: str) -> Response:
    """The route's 200 answer from cached lookups only; `Miss` when the route must answer."""
    from service.predict.routes import answer, read_predict_request, target_fields

    started = time.perf_counter()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Miss
    user = token_cache(request).get(hash_token(token))
    if user is None:
        raise Miss
    settings = request.app.state.settings
    runtime = service.get_runtime(request.app.state, settings)
    body = await read_predict_request(request, settings)
    fields = target_fields(body, settings)
    target = service.cached_target(runtime.lookups, user.id, job_id, **fields)
    if target is None:
        raise Miss
    out = await answer(request, target, body, runtime, started)
    runtime.fast_path_served += 1
    return out if isinstance(out, Response) else render_json(out)


class PredictFastPath:
    """ASGI middleware (the innermost): `serve_cached` for predict requests, the app for the rest
    and for everything `serve_cached` does not serve."""

    def __init__(self, app: ASGIApp, *, enabled: bool = True) -> None:
        self.app = app
        self.enabled = enabled
        self._route: Any = None

    def _predict_route(self) -> Any:
        """The route object, for what reads `scope["route"]` (the latency metric's label)."""
        if self._route is None:
            from service.predict.routes import router

            self._route = next(
                r for r in router.routes if r.path == ROUTE_PATH and "POST" in r.methods
            )
        return self._route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = (
            PREDICT_PATH.match(scope.get("path", ""))
            if self.enabled and scope["type"] == "http" and scope.get("method") == "POST"
            else None
        )
        if match is None:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:  # the limit middlewares outside refuse an oversized body here, as before
            message = await receive()
            if message["type"] != "http.request":  # the client left
                await self.app(scope, _replay(b"", receive, message), send)
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        try:
            # In place, as the router does: the middlewares outside read the matched route
            # from this scope (the latency metric's label). The router resets both on a miss.
            scope["route"] = self._predict_route()
            scope["path_params"] = {"job_id": match.group(1)}
            response = await serve_cached(Request(scope, _replay(raw, receive)), match.group(1))
        except Exception:  # noqa: BLE001 - whatever it was, the route answers (and reports) it
            await self.app(scope, _replay(raw, receive), send)
            return
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive, first: Message | None = None) -> Receive:
    """A `receive` that gives the already-read body (or `first`) once, then the client's."""
    pending = [first or {"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replayed
