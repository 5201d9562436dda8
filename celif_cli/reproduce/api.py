"""A small HTTP client of the service's public API (httpx), as any other client would use it.

Only documented routes (docs/api.md); errors become `ApiError` with a message a user can act
on (wrong URL, refused token, the service's own `detail`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

API = "/api/v1"


class ApiError(RuntimeError):
    def __init__(self, message: str, status: int | None = None, detail: Any = None):
        super().__init__(message)
        self.status = status
        self.detail = detail


def format_detail(detail: Any) -> str:
    """FastAPI's `detail`: a message, or a list of {"loc", "msg"} (422) made readable."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


class Client:
    def __init__(self, url: str, token: str, *, timeout: float = 60.0, transport=None):
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    def _request(self, method: str, path: str, *, ok=(200,), **kw) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.ConnectError as exc:
            raise ApiError(
                f"cannot reach the service at {self.url} ({exc}); is `celif serve` running "
                "there? (--url)"
            ) from None
        except httpx.TimeoutException:
            raise ApiError(f"{method} {self.url}{path} timed out") from None
        except httpx.HTTPError as exc:
            raise ApiError(f"{method} {self.url}{path} failed: {exc}") from None
        if r.status_code in ok:
            return r
        self._raise_for(r, method, path)

    def _json(self, method: str, path: str, **kw) -> Any:
        r = self._request(method, path, **kw)
        try:
            return r.json()
        except ValueError:
            raise ApiError(
                f"{self.url}{path} did not answer JSON: is {self.url} a celif service? (--url)"
            ) from None

    # ------------------------------------------------------------------ routes
    def check(self) -> None:
        """Fail early and clearly: unreachable, not a celif service, or a refused token."""
        try:
            health = self._json("GET", "/healthz")
        except ApiError as exc:
            if exc.status == 404:
                raise ApiError(f"{self.url} has no /healthz: is it a celif service? (--url)") from None  # fmt: skip
            raise
        if not isinstance(health, dict) or health.get("status") != "ok":
            raise ApiError(f"{self.url}/healthz answered {health!r}: not a healthy celif service")
        self._json("GET", f"{API}/jobs", params={"limit": 1})  # 401 here when the token is bad

    def recipes(self) -> list[dict[str, Any]]:
        try:
            return list(self._json("GET", f"{API}/recipes")["items"])
        except ApiError as exc:
            if exc.status == 404:
                raise ApiError(f"{self.url} has no recipe catalog (GET {API}/recipes -> 404): a service too old for `celif reproduce`?") from None  # fmt: skip
            raise

    def jobs(self, page_size: int = 200) -> Iterator[dict[str, Any]]:
        """Every own job, newest first, across all pages."""
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if cursor:
                params["cursor"] = cursor
            page = self._json("GET", f"{API}/jobs", params=params)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def job(self, job_id: str) -> dict[str, Any] | None:
        """The job, or None when this service does not know it (404)."""
        try:
            return self._json("GET", f"{API}/jobs/{quote(job_id, safe='')}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def submit(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:  # fmt: skip
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json("POST", f"{API}/jobs", json=body, headers=headers, ok=(201,))

    def validate(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", f"{API}/jobs", json=body, params={"dry_run": "true"})

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        """All learning-curve points of a job (paged with `after`)."""
        points: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self._json(
                "GET", f"{API}/jobs/{job_id}/metrics", params={"after": after, "limit": 10000}
            )
            points.extend(page["items"])
            if not page.get("has_more") or not page["items"]:
                return points
            after = page["last_seq"]

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        return list(self._json("GET", f"{API}/jobs/{job_id}/checkpoints"))

    def curves_png(self, job_id: str) -> bytes:
        return self._request("GET", f"{API}/jobs/{job_id}/curves.png").content

    def download_checkpoint(self, job_id: str, ref: str, dest: Path) -> dict[str, Any] | None:
        """Stream checkpoint `ref` (latest/best/id) to `dest` (atomically, sha256 checked).

        None when the job has no such checkpoint (404). A file already at `dest` with the
        announced digest is kept without a second download (restartable)."""
        dest = Path(dest)
        path = f"{API}/jobs/{job_id}/checkpoints/{ref}"
        try:
            with self._http.stream("GET", path) as r:
                if r.status_code == 404:
                    return None
                if r.status_code != 200:
                    r.read()
                    self._raise_for(r, "GET", path)
                info = {
                    "id": r.headers.get("X-Checkpoint-Id"),
                    "step": int(r.headers.get("X-Checkpoint-Step") or 0),
                    "sha256": r.headers.get("X-Checkpoint-SHA256"),
                    "job": job_id,
                }
                if dest.is_file() and info["sha256"] and file_sha256(dest) == info["sha256"]:
                    return {**info, "size_bytes": dest.stat().st_size}
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.part")
                digest = hashlib.sha256()
                with tmp.open("wb") as f:
                    for chunk in r.iter_bytes():
                        digest.update(chunk)
                        f.write(chunk)
        except httpx.HTTPError as exc:
            raise ApiError(f"downloading {path} failed: {exc}") from None
        if info["sha256"] and digest.hexdigest() != info["sha256"]:
            tmp.unlink(missing_ok=True)
            raise ApiError(f"{path}: downloaded file does not match X-Checkpoint-SHA256")
        tmp.replace(dest)
        return {**info, "sha256": digest.hexdigest(), "size_bytes": dest.stat().st_size}

    def upload_checkpoint(self, path: Path) -> dict[str, Any]:
        with Path(path).open("rb") as f:
            files = {"file": (Path(path).name, f, "application/octet-stream")}
            return self._json("POST", f"{API}/checkpoints", files=files, ok=(201,))

    # ------------------------------------------------------------------ studies
    def submit_study(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", f"{API}/studies", json=body, ok=(201,))

    def study(self, study_id: str) -> dict[str, Any]:
        return self._json("GET", f"{API}/studies/{quote(study_id, safe='')}")

    def study_table(self, study_id: str) -> dict[str, Any]:
        return self._json("GET", f"{API}/studies/{quote(study_id, safe='')}/table")

    def study_csv(self, study_id: str) -> str:
        return self._request("GET", f"{API}/studies/{quote(study_id, safe='')}/table.csv").text

    def _raise_for(self, r: httpx.Response, method: str, path: str):
        if r.status_code == 401:
            raise ApiError(
                f"the service at {self.url} refused the token (401): pass --token or set "
                "CELIF_TOKEN (create one with `celif token create --name NAME`)",
                401,
            )
        try:
            detail = r.json().get("detail")
        except (ValueError, AttributeError):
            detail = r.text[:300]
        raise ApiError(
            f"{method} {path} -> {r.status_code}: {format_detail(detail)}", r.status_code, detail
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
