"""The dashboard: `/` serves a single page (vanilla JS) that talks to the public API.

Static files are served from this package's `static/` folder; plotly.js is served from the
installed `plotly` Python package (never a CDN, never a copy in the repository). The page holds
the API token in localStorage and sends it as a bearer header, including on the SSE stream
(read with fetch streaming), so the token never appears in a URL.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from service.errors import NotFound, ServiceUnavailable

STATIC_DIR = Path(__file__).resolve().parent / "static"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

router = APIRouter(include_in_schema=False)


@cache
def plotly_js_path() -> Path | None:
    """plotly.min.js as shipped inside the installed `plotly` package."""
    try:
        import plotly
    except ImportError:
        return None
    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


# plotly.js injects a few stylesheets as <style> elements with literal text (e.g. its bundled
# maplibre CSS). The strict CSP admits exactly those texts, by hash, read from the file served.
_STYLE_LITERAL = re.compile(r'createElement\("style"\);[^;]{0,200}?textContent=\'([^\'\\]*)\'')


@cache
def plotly_style_hashes() -> tuple[str, ...]:
    """CSP source expressions ('sha256-...') of the stylesheets plotly.min.js injects."""
    path = plotly_js_path()
    if path is None:
        return ()
    text = path.read_text(encoding="utf-8")
    return tuple(
        "'sha256-" + base64.b64encode(hashlib.sha256(m.group(1).encode()).digest()).decode() + "'"
        for m in _STYLE_LITERAL.finditer(text)
    )


@router.get("/")
def index() -> FileResponse:
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type=MEDIA_TYPES[".html"],
        headers={"Cache-Control": "no-cache"},
    )


@router.get("/dashboard")
def dashboard_redirect() -> RedirectResponse:
    return RedirectResponse("/")


@router.get("/static/dashboard/{name}")
def static_file(name: str) -> FileResponse:
    path = (STATIC_DIR / name).resolve()
    if path.parent != STATIC_DIR or path.suffix not in MEDIA_TYPES or not path.is_file():
        raise NotFound(f"no static file {name!r}")
    return FileResponse(
        path, media_type=MEDIA_TYPES[path.suffix], headers={"Cache-Control": "no-cache"}
    )


@router.get("/static/vendor/plotly.min.js")
def plotly_js() -> FileResponse:
    path = plotly_js_path()
    if path is None:
        raise ServiceUnavailable("the plotly package is not installed; pip install plotly")
    return FileResponse(
        path,
        media_type=MEDIA_TYPES[".js"],
        headers={"Cache-Control": "public, max-age=86400"},
    )
