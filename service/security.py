"""Request guards that hold for every route.

`RejectNulMiddleware`: a NUL byte (0x00) anywhere in the URL path, the query string or a header
is refused with 422 before any route runs: PostgreSQL's text types cannot hold NUL, so such a
value would otherwise reach the database as an id or filter and fail there (a 500).
"""

from __future__ import annotations

import json
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
        body = json.dumps(
            {"detail": [{"loc": loc, "msg": f"{where} {NUL_MESSAGE}", "type": "value_error"}]}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 422,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


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
