"""Engine and session factory, one per database URL (API process and worker alike)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)


# A client host that drops off the network inside a transaction (a worker between the UPDATE and
# the COMMIT of a metric flush) keeps its row locks on the server until the server notices the
# connection is dead: with the kernel's keepalive defaults, over two hours, during which the
# reaper's re-queue of that job and every claim of it wait on the lock. These ask the server to
# probe an idle client after 10 s and give up after 3 unanswered probes 5 s apart, and to drop a
# connection whose sent data stays unacknowledged for 25 s: a vanished host's locks are released
# within ~25 s, less than the default `stale_after_s` (30). A live client answers probes in its
# kernel, so a long idle connection (an SSE stream's LISTEN) is not affected. The same values
# on the client side let a cut-off host's own connections fail instead of hanging.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 10, 5, 3
_USER_TIMEOUT_MS = (KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_COUNT) * 1000
POSTGRES_KEEPALIVE = {
    "options": (
        f"-c tcp_keepalives_idle={KEEPALIVE_IDLE_S} "
        f"-c tcp_keepalives_interval={KEEPALIVE_INTERVAL_S} "
        f"-c tcp_keepalives_count={KEEPALIVE_COUNT} -c tcp_user_timeout={_USER_TIMEOUT_MS}"
    ),
    "keepalives": 1,
    "keepalives_idle": KEEPALIVE_IDLE_S,
    "keepalives_interval": KEEPALIVE_INTERVAL_S,
    "keepalives_count": KEEPALIVE_COUNT,
    "tcp_user_timeout": _USER_TIMEOUT_MS,
}


@lru_cache
def get_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL: readers never block the writer
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=POSTGRES_KEEPALIVE
    )


@lru_cache
def get_sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """One transaction: commit on success, roll back on error."""
    with transaction(get_sessionmaker(url)) as session:
        yield session


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session from ``factory`` as one unit of work: commit on success, roll back on error,
    always closed. The unit of work (a request, a worker's step) owns the commit: the code it
    calls flushes and registers what must happen once the outcome is known (`after_commit`,
    `after_rollback`), e.g. the job's message sent only once its row is committed."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        _run(session, _ROLLBACK)
        raise
    finally:
        session.close()
    _run(session, _COMMIT)


_COMMIT, _ROLLBACK = "celif.after_commit", "celif.after_rollback"


def after_commit(session: Session, callback: Callable[[], object]) -> None:
    """Call `callback` once this unit of work has committed (not if it rolls back)."""
    session.info.setdefault(_COMMIT, []).append(callback)


def after_rollback(session: Session, callback: Callable[[], object]) -> None:
    """Call `callback` if this unit of work rolls back (e.g. remove a file stored for a row that
    was never committed)."""
    session.info.setdefault(_ROLLBACK, []).append(callback)


def _run(session: Session, key: str) -> None:
    callbacks = session.info.pop(key, [])
    session.info.pop(_ROLLBACK if key == _COMMIT else _COMMIT, None)
    for callback in callbacks:
        try:
            callback()
        except Exception:  # the outcome is settled; a failed follow-up must not undo or mask it
            log.exception("after-%s callback failed", "commit" if key == _COMMIT else "rollback")
