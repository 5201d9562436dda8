"""Claiming a job and choosing where it resumes, in one transaction.

The claim is `lease.claim` (conditional UPDATE, rowcount-checked): a duplicate or re-delivered
message for a job that is running under a live lease or is finished claims nothing. A claimed
job that must not run (cancel requested, worker-loss attempts exhausted, a dataset its owner
does not own) is released at once. Otherwise it resumes from its newest checkpoint whose
artifact is intact (fetched from the store, sha256 checked; rows of missing or corrupt ones are
dropped; an unreachable store raises and nothing is written), its metric events past that step
are deleted (the steps after it run again), and its `running` status event records the attempt
and the step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from jobstore import states
from jobstore.artifacts import CorruptArtifact, MissingArtifact, artifact_store, dataset_key
from jobstore.checkpoints import list_checkpoints
from jobstore.datasets import job_dataset_error
from jobstore.db.models import Dataset, Job
from jobstore.db.session import session_scope
from jobstore.events import delete_metric_events
from jobstore.settings import Settings
from worker import lease

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    spec: dict[str, Any]
    resume_from: Path | None  # the checkpoint file, or None to start afresh
    step: int  # the step it resumes at (0 afresh)
    latest_metrics: dict[str, Any]
    attempt: int
    dataset: tuple[str, str] | None = None  # (key, sha256) of its uploaded dataset


def claim_job(settings: Settings, job_id: str, worker_id: str) -> Claim | None:
    """Claim the job for `worker_id` and commit; None when there is nothing to run. Raises
    (with nothing written: the transaction rolls back) when the database or the storage fails."""
    with session_scope(settings.database_url) as session:
        job = lease.claim(session, job_id, worker_id, settings.stale_after_s)
        if job is None:
            current = lease.load(session, job_id)
            log.info(
                "job %s not claimed (%s); nothing to do",
                job_id,
                "gone" if current is None else current.status,
            )
            return None
        refusal = _refusal(session, job, settings)
        if refusal is not None:
            status, event, columns = refusal
            lease.release(session, job.id, worker_id, status, event=event, **columns)
            return None
        resume = _pick_checkpoint(session, settings, job_id)
        step = resume[1] if resume else 0
        # The stored series must have no duplicates: the steps after the checkpoint re-run.
        delete_metric_events(session, job.id, after_step=step if resume else None)
        job.step = step
        states.record_status(
            session,
            job,
            worker=worker_id,
            attempt=job.attempts,
            resumed_from_step=step if resume else None,
        )
        claim = Claim(
            spec=dict(job.spec),
            resume_from=resume[0] if resume else None,
            step=step,
            latest_metrics=dict(job.latest_metrics or {}),
            attempt=job.attempts,
            dataset=_dataset(session, job),
        )
    log.info("job %s claimed by %s (attempt %s)", job_id, worker_id, claim.attempt)
    return claim


def _refusal(session: Session, job: Job, settings: Settings):
    """(status, event, columns) when the claimed job must not run, else None."""
    if job.cancel_requested:
        status, reason = states.stop_outcome(job.stop_reason)
        return status, {"reason": reason}, {}
    if job.attempts > settings.max_infra_retries + 1:
        error = f"gave up after {job.attempts - 1} attempts (worker lost each time)"
        event = {"error": "retries exhausted", "attempts": job.attempts - 1}
        return "failed", event, {"error": error}
    refused = job_dataset_error(session, job)
    if refused is not None:  # the owner must own the dataset the spec names, always
        return "failed", {"error": refused, "kind": "DataError"}, {"error": refused}
    return None


def _pick_checkpoint(session: Session, settings: Settings, job_id: str) -> tuple[Path, int] | None:
    """The newest checkpoint whose artifact is intact, fetched into a local file (sha256
    checked); rows of missing or corrupt ones are dropped, falling back to the one before."""
    store = artifact_store(settings)
    for row in list_checkpoints(session, job_id, newest_first=True):
        try:
            return store.fetch(row.path, row.sha256), row.step
        except (MissingArtifact, CorruptArtifact) as exc:
            # Any other error (StoreUnavailable, an OSError such as storage not mounted or
            # EIO) means the store is unavailable, not the checkpoint gone: it propagates,
            # the claim rolls back, and the job stays queued with its rows for a later claim.
            log.warning(
                "job %s: checkpoint %s (step %s) dropped: %s", job_id, row.id, row.step, exc
            )
        session.delete(row)
    return None


def _dataset(session: Session, job: Job) -> tuple[str, str] | None:
    """(key, sha256) of the uploaded dataset the job trains on, or None."""
    task = (job.spec or {}).get("task") or {}
    if task.get("name") != "dataset":
        return None
    row = session.get(Dataset, (task.get("params") or {}).get("dataset_id"))
    return dataset_key(row.path), row.sha256  # (the refusals checked that it exists)
