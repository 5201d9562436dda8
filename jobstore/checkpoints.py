"""Queries of a job's checkpoint rows: read them, register a new one, apply retention.

`checkpoints.path` is relative to `settings.storage_dir`; these functions never touch files
(retention returns the paths it no longer needs, for the caller to delete after the commit).
They build statements and flush; the caller commits.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobstore.db.models import Checkpoint
from jobstore.events import append_event


def list_checkpoints(
    session: Session, job_id: str, *, newest_first: bool = False
) -> list[Checkpoint]:
    """By step: oldest first, or newest first."""
    order = Checkpoint.step.desc() if newest_first else Checkpoint.step
    return list(
        session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(order))
    )


def get_checkpoint(session: Session, job_id: str, ref: str) -> Checkpoint | None:
    """`ref` = "latest" (highest step), "best" (the newest flagged best) or a checkpoint id."""
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id)
    if ref == "latest":
        stmt = stmt.order_by(Checkpoint.step.desc())
    elif ref == "best":
        stmt = stmt.where(Checkpoint.is_best.is_(True)).order_by(Checkpoint.step.desc())
    else:
        stmt = stmt.where(Checkpoint.id == ref)
    return session.scalars(stmt.limit(1)).first()


def register_checkpoint(session: Session, row: Checkpoint) -> Checkpoint:
    """Add the row of a checkpoint just written, and its "checkpoint" event. A row of the same
    step (re-written after a resume) is replaced; a best one takes the flag from the others."""
    for other in session.scalars(select(Checkpoint).where(Checkpoint.job_id == row.job_id)):
        if other.step == row.step:
            session.delete(other)
        elif row.is_best and other.is_best:
            other.is_best = False
    session.flush()  # the delete before the insert: (job_id, step) is unique
    session.add(row)
    session.flush()
    data = {"id": row.id, "step": row.step, "metrics": row.metrics, "is_best": row.is_best}
    append_event(session, row.job_id, "checkpoint", data)
    return row


def apply_retention(
    session: Session, job_id: str, *, keep_last: int, keep_best: bool, keep_path: str
) -> list[str]:
    """Keep the newest `keep_last` rows (and the best ones with `keep_best`), delete the others'
    rows, and return the paths no kept row (nor `keep_path`) still names: the files to delete."""
    rows = list_checkpoints(session, job_id, newest_first=True)
    keep = {r.id for r in rows[:keep_last]}
    if keep_best:
        keep |= {r.id for r in rows if r.is_best}
    kept_paths = {r.path for r in rows if r.id in keep} | {keep_path}
    doomed = []
    for r in rows:
        if r.id not in keep:
            session.delete(r)
            if r.path not in kept_paths:  # a trainer may reuse a file name (e.g. best.st)
                doomed.append(r.path)
    return doomed
