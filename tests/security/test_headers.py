"""Security headers on every response (dashboard, static files, API, errors), and a dashboard
page that needs no inline script or style, so the strict CSP holds (the browser test,
tests/service/test_dashboard_browser.py, runs the dashboard under it)."""

from __future__ import annotations

from html.parser import HTMLParser

import httpx

from service.dashboard.routes import STATIC_DIR

EXPECTED = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def _check(r: httpx.Response) -> None:
    for name, value in EXPECTED.items():
        assert r.headers.get(name) == value, (r.url, name, r.headers.get(name))
    csp = r.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert "unsafe" not in csp.replace("style-src-attr 'unsafe-inline'", "")
    assert directives["default-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"


def test_every_kind_of_response_has_the_headers(pserver, pclient, tokens):
    with httpx.Client(base_url=pserver.url) as anon:
        for path in (
            "/",
            "/static/dashboard/app.js",
            "/static/dashboard/app.css",
            "/static/vendor/plotly.min.js",
            "/static/dashboard/nope.js",
            "/healthz",
            "/metrics",
            "/openapi.json",
            "/api/v1/jobs",  # 401
            "/api/v1/jobs/a%00b",  # 422 from the NUL guard
        ):
            _check(anon.get(path))
    _check(pclient.get("/api/v1/jobs"))
    _check(pclient.get("/api/v1/jobs/nope"))  # 404
    _check(pclient.post("/api/v1/jobs", json={"task": {"name": "nope"}}))  # 422


class _Inline(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        names = {k for k, _ in attrs}
        if tag == "script" and "src" not in names:
            self.found.append("inline <script>")
        if tag == "style":
            self.found.append("<style> element")
        self.found += [f"<{tag} {k}=...>" for k in names if k == "style" or k.startswith("on")]


def test_dashboard_html_has_no_inline_script_or_style():
    parser = _Inline()
    parser.feed((STATIC_DIR / "index.html").read_text())
    assert parser.found == []
    js = (STATIC_DIR / "app.js").read_text()
    for forbidden in ('setAttribute("style"', "eval(", "new Function", "javascript:"):
        assert forbidden not in js, forbidden
