"""Request guards and response headers that hold for every route.

`RejectNulMiddleware`: a NUL byte (0x00) anywhere in the URL path, the query string or a header
is refused with 422 before any route runs: PostgreSQL's text types cannot hold NUL, so such a
value would otherwise reach the database as an id or filter and fail there (a 500).
"""

from __future__ import annotations

import json
from functools import cache
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

NUL = "\x00"
NUL_MESSAGE = "must not contain NUL (0x00) bytes"


def nul_location(scope: Scope) -> list[str] | None:
    """Where the request carries a NUL byte (FastAPI's `loc` form), or None."""
    if NUL in scope.get("path", ""):
        return ["path"]
    query = scope.get("query_string", b"").decode("latin-1")
    if "%00" in query or NUL in query:
        for name, value in parse_qsl(query, keep_blank_values=True, encoding="latin-1"):
            if NUL in name or NUL in value:
                return ["query", name.replace(NUL, "\\x00")]
    for name, value in scope.get("headers", []):
        if b"\x00" in value:
            return ["header", name.decode("latin-1")]
    return None


class RejectNulMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loc = nul_location(scope) if scope["type"] == "http" else None
        if loc is None:
            await self.app(scope, receive, send)
            return
        where = "the URL path" if loc == ["path"] else f"{loc[0]} {loc[1]!r}"
        detail = [{"loc": loc, "msg": f"{where} {NUL_MESSAGE}", "type": "value_error"}]
        await send_json(send, 422, {"detail": detail})


def find_nul(value: object, loc: tuple = ()) -> tuple | None:
    """The location of the first string (key or value) holding a NUL byte in a JSON value."""
    if isinstance(value, str):
        return loc if NUL in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and NUL in key:
                return (*loc, key.replace(NUL, "\\x00"))
            found = find_nul(item, (*loc, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = find_nul(item, (*loc, i))
            if found is not None:
                return found
    return None


# The dashboard's page loads only its own files (app.js, app.css, the locally served plotly.js)
# and talks only to this origin: no inline script, no eval, no framing, no other origin.
# plotly.js adds its stylesheet rules through one empty <style> element (filled with CSSOM
# insertRule, which CSP does not govern) and a few <style> elements of fixed text: those, and
# only those, are allowed by their hashes. (`style-src` is the fallback of browsers without the
# -elem/-attr directives.)
EMPTY_STYLE_HASH = "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"


@cache
def content_security_policy() -> str:
    from service.dashboard.routes import plotly_style_hashes

    styles = " ".join(("'self'", EMPTY_STYLE_HASH, *plotly_style_hashes()))
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            f"style-src {styles}",
            f"style-src-elem {styles}",
            # plotly.js sets style="" attributes (d3 .attr("style")) on its SVG nodes. An inline
            # style attribute can neither run code nor select on page content (no selectors),
            # so attributes are allowed while <style> elements and scripts stay locked down.
            "style-src-attr 'unsafe-inline'",
            "img-src 'self' data: blob:",
            "font-src 'self'",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


def security_headers() -> tuple[tuple[bytes, bytes], ...]:
    return (
        (b"content-security-policy", content_security_policy().encode()),
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    )


# FastAPI's own Swagger UI / ReDoc pages load their scripts from a CDN with an inline bootstrap
# script; they get every header but the CSP (they are developer pages, not the dashboard).
NO_CSP_PATHS = ("/docs", "/redoc")


class SecurityHeadersMiddleware:
    """Adds the headers above to every HTTP response (API, dashboard, errors alike)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        extra = [
            h
            for h in security_headers()
            if not (h[0] == b"content-security-policy" and path.startswith(NO_CSP_PATHS))
        ]

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", []),
                        *(h for h in extra if h[0] not in present),
                    ],
                }
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def send_json(send: Send, status: int, payload: object) -> None:
    """A whole JSON response sent from ASGI middleware (before any route has answered)."""
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
