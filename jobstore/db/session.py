"""Engine and session factory, one per database URL (API process and worker alike)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)


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
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


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
