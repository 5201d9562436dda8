"""Job leases, shared by the task and the reaper (torch-free): claim, heartbeat, release.

Claim and release are `jobstore.states.transition`s under a lease condition; the heartbeat
refreshes a held lease.

Every transition is a conditional UPDATE checked by rowcount, so two workers (or a worker and a
reaper) racing on one job can never both win: a job is claimed by at most one live worker, and a
worker that lost its lease (reaped, cancelled) can no longer write its state.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import DateTime, and_, func, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from jobstore import states
from jobstore.db.models import TERMINAL_STATES, Job, utcnow

log = logging.getLogger(__name__)


def lease_clock(session: Session) -> ColumnElement[datetime] | datetime:
    """ "Now" for writing and judging leases. On PostgreSQL the database's clock, read when the
    statement runs, i.e. after any lock wait: a claim and a reaper that both waited behind a
    cut-off host's row lock then compare like with like (with the clients' clocks, read before
    the wait, the reaper could judge the brand-new claim stale), and hosts' clock skew never
    shortens a lease. On SQLite (one host) the process's clock."""
    if session.get_bind().dialect.name == "postgresql":
        return func.clock_timestamp(type_=DateTime(timezone=True))
    return utcnow()


def stale_lease(session: Session, stale_after_s: float):
    """WHERE clause: the job's lease (if any) has not been refreshed for `stale_after_s`."""
    cutoff = lease_clock(session) - timedelta(seconds=stale_after_s)
    return or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff)


def claim(session: Session, job_id: str, worker_id: str, stale_after_s: float) -> Job | None:
    """Take the job if it is queued, or running under a lease that went stale. Caller commits.

    Returns the claimed job (its `attempts` already counts this claim) or None. Its `running`
    status event is the caller's to record (`states.record_status`) in this transaction, once
    it knows where the job resumes from.
    """
    # Lock the row first: an UPDATE computes its new values before it waits on a row lock, so
    # `heartbeat_at` would carry the time before the wait, and a reaper that waited behind the
    # same lock would find the brand-new lease already stale.
    session.execute(select(Job.id).where(Job.id == job_id).with_for_update())
    return states.transition(
        session,
        job_id,
        "running",
        where=or_(Job.status == "queued", stale_lease(session, stale_after_s)),
        record=False,
        worker_id=worker_id,
        heartbeat_at=lease_clock(session),
        attempts=Job.attempts + 1,
        error=None,
    )


def holds_lease(job_id: str, worker_id: str):
    """WHERE clause: the job is running under this worker's lease."""
    return and_(Job.id == job_id, Job.worker_id == worker_id, Job.status == "running")


def heartbeat(session: Session, job_id: str, worker_id: str, **progress: Any) -> bool:
    """Refresh the lease and write progress (`states.PROGRESS_COLUMNS` only); False when the
    lease is lost. Not a transition: the job stays `running`."""
    unknown = set(progress) - states.PROGRESS_COLUMNS
    if unknown:
        raise ValueError(f"heartbeat may not write {sorted(unknown)}")
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(holds_lease(job_id, worker_id))
        .values(heartbeat_at=lease_clock(session), updated_at=now, **progress)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def release(
    session: Session,
    job_id: str,
    worker_id: str | None,
    status: str,
    *,
    stale_after_s: float | None = None,
    event: dict[str, Any] | None = None,
    **columns: Any,
) -> Job | None:
    """Move a running job to `status` (terminal, or `queued` to re-queue it), with a status event
    (`states.transition`).

    With `worker_id` the caller must hold the lease; with `stale_after_s` instead (the reaper)
    the lease must be stale. Returns the job, or None when the condition no longer holds.
    Caller commits (and enqueues a re-queued job only after the commit).
    """
    if worker_id is not None:
        condition = holds_lease(job_id, worker_id)
    elif stale_after_s is not None:
        condition = and_(Job.status == "running", stale_lease(session, stale_after_s))
    else:
        raise ValueError("release() needs worker_id or stale_after_s")
    return states.transition(session, job_id, status, where=condition, event=event, **columns)


def is_terminal(status: str) -> bool:
    return status in TERMINAL_STATES


def load(session: Session, job_id: str) -> Job | None:
    return session.scalars(select(Job).where(Job.id == job_id)).first()
