"""Bearer-token auth: 401 without or with a bad token; tokens stored hashed."""

from __future__ import annotations

import hashlib
import time

import pytest
from sqlalchemy import select

from jobstore.db.models import ApiToken, User
from jobstore.db.session import session_scope
from service.auth.service import create_user_and_token, revoke_token, verify_token

ROUTES = [
    ("GET", "/api/v1/jobs"),
    ("POST", "/api/v1/jobs"),
    ("POST", "/api/v1/jobs:validate"),
    ("GET", "/api/v1/jobs/abc"),
    ("POST", "/api/v1/jobs/abc/cancel"),
    ("GET", "/api/v1/jobs/abc/metrics"),
    ("GET", "/api/v1/jobs/abc/events"),
    ("GET", "/api/v1/jobs/abc/curves.png"),
    ("GET", "/api/v1/jobs/abc/checkpoints"),
    ("GET", "/api/v1/jobs/abc/checkpoints/latest"),
    ("GET", "/api/v1/tasks"),
    ("GET", "/api/v1/neurons"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_no_token_is_401(anon, method, path):
    r = anon.request(method, path, json={} if method == "POST" else None)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert "detail" in r.json()


@pytest.mark.parametrize(
    "header", ["Bearer not-a-token", "Bearer  x y", "Basic YWxpY2U6cHc=", "Token abc", "Bearer"]
)
def test_bad_token_is_401(anon, header):
    r = anon.get("/api/v1/jobs", headers={"Authorization": header})
    assert r.status_code == 401


def test_tokens_are_stored_hashed_and_revocable(db, anon, settings):
    with session_scope(db) as s:
        token = create_user_and_token(s, "carol")
    with session_scope(db) as s:
        rows = s.scalars(select(ApiToken)).all()
        assert token not in {r.token_hash for r in rows}
        assert hashlib.sha256(token.encode()).hexdigest() in {r.token_hash for r in rows}
        user = verify_token(s, token)
        assert user is not None and user.name == "carol"
    assert len(token) >= 43  # 32 random bytes, urlsafe base64
    ok = anon.get("/api/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    with session_scope(db) as s:
        assert revoke_token(s, token)
    revoked_at = time.monotonic()
    # Verified tokens are cached settings.auth_cache_ttl_s (the documented bound): a request
    # sent later than that after the revocation commits is refused; none is refused and then
    # accepted again.
    ttl = settings.auth_cache_ttl_s
    while True:
        sent = time.monotonic()
        r = anon.get("/api/v1/jobs", headers={"Authorization": f"Bearer {token}"})
        if r.status_code == 401:
            break
        assert r.status_code == 200
        assert sent < revoked_at + ttl, "a revoked token still worked past the cache's TTL"
        time.sleep(0.05)
    for _ in range(3):
        assert anon.get("/api/v1/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 401  # fmt: skip


def test_create_user_and_token_reuses_the_user(db):
    with session_scope(db) as s:
        t1 = create_user_and_token(s, "dave")
        t2 = create_user_and_token(s, "dave")
    assert t1 != t2
    with session_scope(db) as s:
        assert len(s.scalars(select(User).where(User.name == "dave")).all()) == 1
        assert verify_token(s, t1).id == verify_token(s, t2).id


def test_public_routes_need_no_token(anon):
    assert anon.get("/healthz").status_code == 200
    assert anon.get("/openapi.json").status_code == 200
