"""Studies in the database: queries, the release of waiting trials, and early stopping.

A study's trials are ordinary jobs with `study_id` set. At most `max_concurrent` of them are
`queued` or `running`; the others are `waiting` (no message sent). `release_waiting` moves the
next ones to `queued` and sends their messages after the commit; it runs when a trial finishes
(`jobstore.states.transition`, every finish path) and in every reaper pass (the safety net).

Early stopping (ASHA) is decided by the reaper pass from the metric points the workers already
streamed (`apply_early_stopping`): a running trial found worse than its rung's cutoff gets
`cancel_requested` with `stop_reason="early_stop"`, and its worker ends it as `stopped_early`
within a step, exactly as it would a cancel. No worker code knows about studies.

Lock order: the study row, then its jobs. A finishing trial holds its job row first, so it only
tries the study's lock (`skip_locked`); what it skips, the next reaper pass releases.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from celif_core.study import asha_keeps, metric_at_rung
from jobstore import states
from jobstore.db.models import Job, JobEvent, Study
from jobstore.db.session import after_commit

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
UNFINISHED = ("waiting", "queued", "running")


def lock_study(session: Session, study_id: str, *, skip_locked: bool = False) -> Study | None:
    stmt = select(Study).where(Study.id == study_id)
    stmt = stmt.with_for_update(skip_locked=skip_locked)
    return session.scalars(stmt).first()


def get_study(session: Session, study_id: str) -> Study | None:
    return session.get(Study, study_id)


def list_studies(session: Session, owner_id: str, *, limit: int) -> list[Study]:
    stmt = select(Study).where(Study.owner_id == owner_id)
    return list(session.scalars(stmt.order_by(Study.created_at.desc()).limit(limit)))


def list_trials(session: Session, study_id: str) -> list[Job]:
    stmt = select(Job).where(Job.study_id == study_id).order_by(Job.trial_index)
    return list(session.scalars(stmt))


def trials_by_study(session: Session, study_ids: Sequence[str]) -> dict[str, list[Job]]:
    out: dict[str, list[Job]] = defaultdict(list)
    if study_ids:
        stmt = select(Job).where(Job.study_id.in_(study_ids)).order_by(Job.trial_index)
        for job in session.scalars(stmt):
            out[job.study_id].append(job)
    return out


def metric_series(
    session: Session, job_ids: Sequence[str], split: str | None, name: str
) -> dict[str, list[tuple[int, float]]]:
    """{job id: [(step, value), ...] by step} of one metric of several jobs, in one query."""
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    if not job_ids:
        return out
    stmt = select(JobEvent.job_id, JobEvent.step, JobEvent.value).where(
        JobEvent.job_id.in_(job_ids), JobEvent.kind == "metric", JobEvent.name == name
    )
    stmt = stmt.where(JobEvent.split.is_(None) if split is None else JobEvent.split == split)
    for job_id, step, value in session.execute(stmt.order_by(JobEvent.job_id, JobEvent.step)):
        out[job_id].append((int(step or 0), value))
    return out


def split_metric(metric: str) -> tuple[str | None, str]:
    """ "val_mse" -> ("val", "mse"): the key of `latest_metrics` as a metric point's split and
    name (see `worker.reporter.metric_key`)."""
    split, _, name = metric.partition("_")
    if split in ("train", "val", "test") and name:
        return split, name
    return None, metric


# ----------------------------------------------------------------------------- release
def release_waiting(session: Session, study_id: str, *, skip_locked: bool = True) -> list[str]:
    """Move the study's next waiting trials to `queued` while fewer than `max_concurrent` are
    queued or running; their messages go after the commit. Returns the released ids."""
    study = lock_study(session, study_id, skip_locked=skip_locked)
    if study is None or study.cancel_requested:
        return []
    active = session.scalar(
        select(func.count()).where(Job.study_id == study_id, Job.status.in_(ACTIVE))
    )
    free = study.max_concurrent - int(active or 0)
    if free <= 0:
        return []
    waiting = session.scalars(
        select(Job.id)
        .where(Job.study_id == study_id, Job.status == "waiting")
        .order_by(Job.trial_index)
        .limit(free)
    ).all()
    released = [
        job_id
        for job_id in waiting
        if states.transition(session, job_id, "queued", event={"reason": "released by its study"})
    ]
    if released:
        from jobstore.queue import try_enqueue_job

        after_commit(session, lambda: [try_enqueue_job(job_id) for job_id in released])
    return released


def studies_in_progress(session: Session) -> list[str]:
    """Studies with a waiting or running trial (what a reaper pass looks at)."""
    stmt = select(Job.study_id).where(
        Job.study_id.is_not(None), Job.status.in_(("waiting", "running"))
    )
    return list(session.scalars(stmt.distinct()))


# ----------------------------------------------------------------------------- early stopping
def rung_steps(es: dict[str, Any], job: Job) -> list[int]:
    """The study's rungs in this trial's steps (epochs converted with its batch size)."""
    rungs = [int(r) if es.get("unit", "steps") == "steps" else float(r) for r in es["rungs"]]
    if es.get("unit", "steps") == "steps":
        return rungs
    from celif_core.spec import validate_spec

    spec = validate_spec(job.spec)
    per_epoch = (spec.train_size or 0) / spec.training.batch_size
    return [math.ceil(r * per_epoch) for r in rungs]


def apply_early_stopping(session: Session, study_id: str) -> list[str]:
    """One ASHA pass over the study: each running trial that reached a rung not yet decided
    for it is compared with every trial's metric at that rung (finished trials included); once
    `grace` trials have a value there, it goes on only when in the top `1/reduction_factor`.
    Returns the ids of the trials asked to stop."""
    study = lock_study(session, study_id)
    es = study.early_stopping if study is not None else None
    if not es or study.cancel_requested:
        return []
    trials = list_trials(session, study_id)
    split, name = split_metric(es["metric"])
    series = metric_series(session, [t.id for t in trials], split, name)
    steps = {t.id: rung_steps(es, t) for t in trials}
    decisions = {k: dict(v) for k, v in (study.rung_decisions or {}).items()}
    factor = int(es.get("reduction_factor", 2))
    grace = int(es.get("grace", factor))
    stopped: list[str] = []
    for k in range(len(es["rungs"])):
        values = {}
        for t in trials:
            if t.step >= steps[t.id][k]:
                v = metric_at_rung(series.get(t.id, []), steps[t.id][k])
                if v is not None:
                    values[t.id] = v
        for t in trials:
            mine = decisions.setdefault(t.id, {})
            if t.status != "running" or t.cancel_requested or t.id not in values:
                continue
            if str(k) in mine or "stop" in mine.values() or len(values) < grace:
                continue
            others = [v for job_id, v in values.items() if job_id != t.id]
            keep = asha_keeps(values[t.id], others, mode=es["mode"], reduction_factor=factor)
            mine[str(k)] = "continue" if keep else "stop"
            if not keep:
                t.cancel_requested, t.stop_reason = True, "early_stop"
                stopped.append(t.id)
    study.rung_decisions = {k: v for k, v in decisions.items() if v}
    session.flush()
    if stopped:
        log.info("study %s: early stopping %s", study_id, stopped)
    return stopped
