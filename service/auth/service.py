"""API tokens. A token is `secrets.token_urlsafe(32)` (256 random bits) shown once; the database
keeps only its sha256, so a leaked table does not leak tokens. These functions flush but never
commit: the caller owns the transaction (`session_scope` commits on exit)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobstore.db.models import ApiToken, User, utcnow

# last_used_at is refreshed at most this often, so reads do not write on every request.
_LAST_USED_GRANULARITY = timedelta(minutes=5)


def generate_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def get_or_create_user(session: Session, name: str) -> User:
    user = session.scalars(select(User).where(User.name == name)).first()
    if user is None:
        user = User(name=name)
        session.add(user)
        session.flush()
    return user


def create_token(session: Session, user: User, token_name: str = "default") -> str:
    """Store a new token for `user` and return it (the only time it is visible)."""
    token = generate_token()
    session.add(ApiToken(user_id=user.id, name=token_name, token_hash=hash_token(token)))
    session.flush()
    return token


def create_user_and_token(session: Session, name: str, token_name: str = "cli") -> str:
    """Create user `name` if absent, add a token for them and return it. Caller commits."""
    return create_token(session, get_or_create_user(session, name), token_name)


def verify_token(session: Session, token: str, *, now: datetime | None = None) -> User | None:
    """The user a token belongs to, or None when it is unknown or revoked."""
    if not token:
        return None
    digest = hash_token(token)
    row = session.execute(
        select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == digest, ApiToken.revoked.is_(False))
    ).first()
    if row is None:
        return None
    api_token, user = row
    # The lookup is by an indexed digest; this compare only guards against a collation surprise.
    if not hmac.compare_digest(api_token.token_hash, digest):
        return None
    now = now or utcnow()
    last = api_token.last_used_at
    if last is not None and last.tzinfo is None:  # SQLite returns naive datetimes
        last = last.replace(tzinfo=now.tzinfo)
    if last is None or now - last > _LAST_USED_GRANULARITY:
        api_token.last_used_at = now
    return user


def revoke_token(session: Session, token: str) -> bool:
    api_token = session.scalars(
        select(ApiToken).where(ApiToken.token_hash == hash_token(token))
    ).first()
    if api_token is None:
        return False
    api_token.revoked = True
    session.flush()
    return True
