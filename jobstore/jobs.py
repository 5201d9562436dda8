"""Queries of the jobs domain. Builds statements and flushes; never commits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from jobstore.db.models import Job, JobEvent


def get_job(session: Session, job_id: str, *, for_update: bool = False) -> Job | None:
    stmt = select(Job).where(Job.id == job_id)
    if for_update:
        stmt = stmt.with_for_update()
    return session.scalars(stmt).first()


def get_job_by_idempotency_key(session: Session, owner_id: str, key: str) -> Job | None:
    return session.scalars(
        select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == key)
    ).first()


def add_job(session: Session, job: Job) -> Job:
    session.add(job)
    session.flush()
    return job


def list_jobs(
    session: Session,
    owner_id: str,
    *,
    statuses: Sequence[str] = (),
    tasks: Sequence[str] = (),
    neurons: Sequence[str] = (),
    before: tuple[datetime, str] | None = None,
    limit: int,
) -> list[Job]:
    """Newest first; keyset pagination on (created_at, id) strictly after the cursor `before`."""
    stmt = select(Job).where(Job.owner_id == owner_id)
    if statuses:
        stmt = stmt.where(Job.status.in_(statuses))
    if tasks:
        stmt = stmt.where(Job.task_name.in_(tasks))
    if neurons:
        stmt = stmt.where(Job.neuron.in_(neurons))
    if before is not None:
        created_at, job_id = before
        stmt = stmt.where(
            or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id))
        )
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    return list(session.scalars(stmt))


def count_jobs_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return {status: int(n) for status, n in rows}


def list_events(
    session: Session,
    job_id: str,
    *,
    after: int = 0,
    kinds: Sequence[str] = (),
    limit: int,
) -> list[JobEvent]:
    stmt = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after)
    if kinds:
        stmt = stmt.where(JobEvent.kind.in_(kinds))
    return list(session.scalars(stmt.order_by(JobEvent.id).limit(limit)))
