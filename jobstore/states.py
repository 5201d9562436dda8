"""The job state machine: which status may follow which, and the one function that moves a job.

    waiting ──release──▶ queued      (a study trial, once its study has a free slot)
      └──cancel──▶ cancelled
    queued ──claim──▶ running ──▶ succeeded | failed | cancelled | stopped_early
      │                 │  ▲
      │                 │  └── a stale lease claimed again (a new attempt)
      │                 └────▶ queued   (re-queued: worker lost, shut down, infrastructure retry)
      └──cancel──▶ cancelled

Every status change, by the API (cancel), a worker (claim, finish, hand back) or the reaper
(stale lease), is `transition()`: one conditional UPDATE whose WHERE clause admits only the
states that may precede the target (plus the caller's own condition, e.g. "this worker holds the
lease"), checked by rowcount so two racing writers can never both win, and the status event in
the same transaction. The caller's unit of work commits; a re-queued job is enqueued only after.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from jobstore.db.models import JOB_STATES, TERMINAL_STATES, Job, utcnow
from jobstore.events import append_status_event

# status -> the statuses that may follow it
ALLOWED: dict[str, frozenset[str]] = {
    "waiting": frozenset({"queued", "cancelled"}),
    "queued": frozenset({"running", "cancelled"}),
    "running": frozenset(
        {"running", "queued", "succeeded", "failed", "cancelled", "stopped_early"}
    ),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
    "stopped_early": frozenset(),
}
assert set(ALLOWED) == set(JOB_STATES)

# Columns a transition may set besides `status` and the times it keeps itself. The lease and
# progress columns come with the change (a finished job's last step and metrics, a re-queued
# job's cleared lease); nothing else of a job (its spec, owner, name) changes with its status.
LEASE_COLUMNS = frozenset({"worker_id", "heartbeat_at", "attempts"})
PROGRESS_COLUMNS = frozenset(
    {"step", "latest_metrics", "best_metrics", "telemetry", "backend", "device"}
)
TRANSITION_COLUMNS = LEASE_COLUMNS | PROGRESS_COLUMNS | {"error", "cancel_requested", "stop_reason"}


class IllegalTransition(ValueError):
    """A transition the state machine does not have, or a column it may not write."""


def stop_outcome(stop_reason: str | None) -> tuple[str, str]:
    """(status, reason) a job whose stop was requested ends with: `stopped_early` when its
    study's early stopping asked, `cancelled` otherwise."""
    if stop_reason == "early_stop":
        return "stopped_early", "stopped early by its study"
    return "cancelled", "cancelled"


def can_follow(current: str, target: str) -> bool:
    return target in ALLOWED.get(current, frozenset())


def predecessors(target: str) -> tuple[str, ...]:
    """The statuses a job may be in to move to `target`."""
    if target not in ALLOWED:
        raise IllegalTransition(f"unknown job status {target!r}; expected one of {JOB_STATES}")
    return tuple(s for s in JOB_STATES if target in ALLOWED[s])


def transition(
    session: Session,
    job_id: str,
    target: str,
    *,
    where: ColumnElement[bool] | None = None,
    event: dict[str, Any] | None = None,
    record: bool = True,
    **columns: Any,
) -> Job | None:
    """Move the job to `target` if its status may precede it and `where` holds.

    Sets `updated_at`, `started_at` on the first `running`, `finished_at` on a terminal status,
    clears the lease on `queued`; `columns` (only `TRANSITION_COLUMNS`) are written with it.
    Records a status event with `event` as its data, unless `record` is False: then the caller
    records it in this transaction with `record_status` (the claim, whose event names what it
    finds after taking the lease). Returns the job, or None when the condition did not hold.
    The caller commits.
    """
    sources = predecessors(target)
    unknown = set(columns) - TRANSITION_COLUMNS
    if unknown:
        raise IllegalTransition(
            f"a transition may not write {sorted(unknown)}; allowed: {sorted(TRANSITION_COLUMNS)}"
        )
    now = utcnow()
    values: dict[str, Any] = {"status": target, "updated_at": now}
    if target == "queued":
        values.update(worker_id=None, heartbeat_at=None)
    if target == "running":
        values["started_at"] = func.coalesce(Job.started_at, now)
    if target in TERMINAL_STATES:
        values["finished_at"] = now
    values.update(columns)
    condition = and_(Job.id == job_id, Job.status.in_(sources))
    if where is not None:
        condition = and_(condition, where)
    result = session.execute(
        update(Job).where(condition).values(**values).execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    job = session.get(Job, job_id, populate_existing=True)
    if record:
        record_status(session, job, **(event or {}))
    if target in TERMINAL_STATES and job.study_id is not None:
        # A trial finished: its study may release the next waiting one (same transaction;
        # the message is sent after the commit). Every finish path passes here.
        from jobstore.studies import release_waiting

        release_waiting(session, job.study_id)
    return job


def record_status(session: Session, job: Job, **data: Any) -> None:
    """The status event of the job's current status (after a `transition(..., record=False)`,
    or a new job's `queued`)."""
    append_status_event(session, job.id, job.status, **data)
