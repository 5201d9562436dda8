"""Typed dependencies: `SettingsDep`, `SessionDep`, `CurrentUser`.

The settings object is the one `create_app` was built with (`app.state.settings`), so a test or
an embedded server can run an app on explicit settings without touching the environment.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import inspect
from sqlalchemy.orm import Session, make_transient_to_detached, sessionmaker

from jobstore.db.models import User
from jobstore.db.session import get_sessionmaker, transaction
from jobstore.settings import Settings
from service.auth.service import hash_token, verify_token
from service.errors import Unauthorized
from service.ttlcache import TTLCache

_bearer = HTTPBearer(auto_error=False, description="an API token (`celif token create`)")


# Cheap dependencies are `async def`: FastAPI runs a plain `def` one on the thread pool, and
# each such hop costs the GIL and a wake-up of the event loop (docs/benchmarks.md, profile).
async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_session_factory(settings: SettingsDep) -> sessionmaker[Session]:
    return get_sessionmaker(settings.database_url)


SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]


def get_session(factory: SessionFactoryDep) -> Iterator[Session]:
    """One session (one transaction) per request, closed before the response is sent.

    Service functions commit what they change (one commit per request); what is left pending
    here (e.g. a token's last-used time) is committed on a normal exit and rolled back on error.
    """
    with transaction(factory) as session:
        yield session


def end_unit_of_work(session: Session) -> None:
    """Commit and close the request's session before the rest of the request, which reads no
    database (a forward pass), so it holds no pooled connection. The request's own teardown then
    finds nothing left to commit."""
    session.commit()
    session.close()


# scope="function": the session is committed and closed when the endpoint returns, before the
# response is sent (so a client never reads its own write before it is committed, and a
# streaming response never holds a pooled connection).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def token_cache(request: Request) -> TTLCache:
    """The app's cache of verified tokens (sha256 -> a detached copy of the user), kept
    `settings.auth_cache_ttl_s`: a token revoked elsewhere stops working within that bound."""
    cache = getattr(request.app.state, "token_cache", None)
    if cache is None:
        cache = request.app.state.token_cache = TTLCache(
            request.app.state.settings.auth_cache_ttl_s
        )
    return cache


def _detached_copy(user: User) -> User:
    copy = User(**{a.key: getattr(user, a.key) for a in inspect(User).column_attrs})
    make_transient_to_detached(copy)
    return copy


BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _token_of(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    return credentials.credentials


def cached_user(request: Request, credentials: HTTPAuthorizationCredentials | None) -> User | None:
    """The token's user from the app's token cache (a detached copy, read-only), or None when
    the token must be looked up in the database (`authenticate`)."""
    return token_cache(request).get(hash_token(_token_of(credentials)))


def authenticate(
    request: Request, session: Session, credentials: HTTPAuthorizationCredentials | None
) -> User:
    """The token's user (401 when unknown or revoked), through the token cache."""
    token = _token_of(credentials)
    cache = token_cache(request)
    digest = hash_token(token)
    cached = cache.get(digest)
    if cached is not None:
        # Into this request's session without a query (the cached copy is never modified).
        return session.merge(cached, load=False)
    user = verify_token(session, token)
    if user is None:
        raise Unauthorized("invalid or revoked token")
    cache.put(digest, _detached_copy(user))
    return user


def authenticate_detached(
    request: Request,
    factory: sessionmaker[Session],
    credentials: HTTPAuthorizationCredentials | None,
) -> User:
    """`authenticate` in a session of its own; the user as a detached, read-only copy."""
    with transaction(factory) as session:
        return _detached_copy(authenticate(request, session, credentials))


def get_current_user(request: Request, session: SessionDep, credentials: BearerDep) -> User:
    return authenticate(request, session, credentials)


CurrentUser = Annotated[User, Depends(get_current_user, scope="function")]
