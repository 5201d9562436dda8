"""The job event stream, written by the API and the worker alike.

`job_events.id` is one increasing sequence: it is the metric `seq`, the `after=` cursor and the
SSE event id. Readers page by `id > cursor`, so an event must never become visible *after* one
with a larger id of the same job. Every writer therefore locks the job's row first
(`SELECT ... FOR UPDATE` on PostgreSQL; SQLite serialises writers anyway): appends to one job
are serialised until commit, and their ids commit in order. Each transaction locks one job
only, so this cannot deadlock.

These functions add (or delete) rows and flush; the caller commits (one transaction per batch).
On PostgreSQL an append also NOTIFYs the job's id, delivered at that commit (jobstore/notify.py):
live SSE streams wake on it instead of polling.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from jobstore.db.models import JOB_STATES, Job, JobEvent, utcnow
from jobstore.notify import notify_job_events


def lock_job_events(session: Session, job_id: str) -> None:
    """Serialise event appends of one job until this transaction ends (see module doc)."""
    session.execute(select(Job.id).where(Job.id == job_id).with_for_update())


def _as_datetime(value: Any) -> datetime:
    if value is None:
        return utcnow()
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromtimestamp(float(value), UTC)  # unix seconds


def append_status_event(session: Session, job_id: str, status: str, **data: Any) -> JobEvent:
    """Record that the job is now in `status` (a "status" event; `data`, e.g. `error=...`,
    `attempt=...`, `reason=...`, is stored with it). Written by `jobstore.states` only, with
    the status change itself. Caller commits."""
    if status not in JOB_STATES:
        raise ValueError(f"unknown job status {status!r}; expected one of {JOB_STATES}")
    return append_event(session, job_id, "status", {"status": status, **data})


def append_event(session: Session, job_id: str, kind: str, data: Mapping[str, Any]) -> JobEvent:
    """Any other event (e.g. kind="checkpoint" with id/step/metrics). Caller commits."""
    lock_job_events(session, job_id)
    event = JobEvent(job_id=job_id, kind=kind, data=dict(data), time=utcnow())
    session.add(event)
    session.flush()
    notify_job_events(session, job_id)  # delivered at commit (jobstore/notify.py)
    return event


def append_metric_points(session: Session, job_id: str, points: Iterable[Mapping[str, Any]]) -> int:
    """Append metric points `{step, epoch, split, name, value, time}` as kind="metric" rows.

    `time` may be a datetime or unix seconds (default: now). One INSERT for the whole batch.
    Returns the number of rows written. Caller commits.
    """
    rows = [
        {
            "job_id": job_id,
            "kind": "metric",
            "step": None if p.get("step") is None else int(p["step"]),
            "epoch": None if p.get("epoch") is None else float(p["epoch"]),
            "split": p.get("split"),
            "name": p["name"],
            "value": None if p.get("value") is None else float(p["value"]),
            "data": None,
            "time": _as_datetime(p.get("time")),
        }
        for p in points
    ]
    if not rows:
        return 0
    lock_job_events(session, job_id)
    session.execute(insert(JobEvent), rows)
    notify_job_events(session, job_id)
    return len(rows)


def delete_metric_events(session: Session, job_id: str, *, after_step: int | None) -> None:
    """Delete the job's metric points past `after_step` (all of them with None): the steps a
    resumed job runs again, so the stored series has no duplicates. Caller commits."""
    stmt = delete(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "metric")
    if after_step is not None:
        stmt = stmt.where(JobEvent.step > after_step)
    session.execute(stmt)


def status_events(session: Session, job_id: str) -> list[tuple[dict[str, Any], datetime]]:
    """The job's status events as (data, time), oldest first (time timezone-aware)."""
    rows = session.execute(
        select(JobEvent.data, JobEvent.time)
        .where(JobEvent.job_id == job_id, JobEvent.kind == "status")
        .order_by(JobEvent.id)
    ).all()
    return [(data or {}, _as_datetime(time)) for data, time in rows]
