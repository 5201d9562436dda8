"""Job lease transitions shared by the task and the reaper (torch-free).

Every transition is a conditional UPDATE checked by rowcount, so two workers (or a worker and a
reaper) racing on one job can never both win: a job is claimed by at most one live worker, and a
worker that lost its lease (reaped, cancelled) can no longer write its state.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from service.db.models import TERMINAL_STATES, Job, utcnow
from service.events import append_status_event

log = logging.getLogger(__name__)


def stale_before(stale_after_s: float, now: datetime | None = None) -> datetime:
    return (now or utcnow()) - timedelta(seconds=stale_after_s)


def claim(session: Session, job_id: str, worker_id: str, stale_after_s: float) -> Job | None:
    """Take the job if it is queued, or running under a lease that went stale. Caller commits.

    Returns the claimed job (its `attempts` already counts this claim) or None.
    """
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            or_(
                Job.status == "queued",
                and_(
                    Job.status == "running",
                    or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before(stale_after_s)),
                ),
            ),
        )
        .values(
            status="running",
            worker_id=worker_id,
            heartbeat_at=now,
            attempts=Job.attempts + 1,
            error=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    return session.get(Job, job_id, populate_existing=True)


def holds_lease(job_id: str, worker_id: str):
    """WHERE clause: the job is running under this worker's lease."""
    return and_(Job.id == job_id, Job.worker_id == worker_id, Job.status == "running")


def heartbeat(session: Session, job_id: str, worker_id: str, **values: Any) -> bool:
    """Refresh the lease (and any progress `values`); False when the lease is lost."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(holds_lease(job_id, worker_id))
        .values(heartbeat_at=now, updated_at=now, **values)
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
    **values: Any,
) -> Job | None:
    """Move a running job to `status` (terminal, or `queued` to re-queue it), with a status event.

    With `worker_id` the caller must hold the lease; with `stale_after_s` instead (the reaper)
    the lease must be stale. Returns the job, or None when the condition no longer holds.
    Caller commits (and enqueues a re-queued job only after the commit).
    """
    if worker_id is not None:
        condition = holds_lease(job_id, worker_id)
    else:
        if stale_after_s is None:
            raise ValueError("release() needs worker_id or stale_after_s")
        cutoff = stale_before(stale_after_s)
        condition = and_(
            Job.id == job_id,
            Job.status == "running",
            or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff),
        )
    if status == "queued":
        values = {"worker_id": None, "heartbeat_at": None, **values}
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(condition)
        .values(updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    job = session.get(Job, job_id, populate_existing=True)
    append_status_event(session, job, status, **(event or {}))
    return job


def is_terminal(status: str) -> bool:
    return status in TERMINAL_STATES


def load(session: Session, job_id: str) -> Job | None:
    return session.scalars(select(Job).where(Job.id == job_id)).first()
