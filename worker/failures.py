"""What a failed training run does to its job.

A job's own error (TrainingError, bad data, bad spec, out of memory) fails it with the reason,
no retry: running it again would fail the same way. Anything else is infrastructure (storage,
database, device, other): the job is re-queued after an exponential backoff with jitter (the
worker holds the lease meanwhile), counted per cause in its status events, and failed once the
first such error is older than `infra_retry_budget_s`. The history lives in the status events,
so the count and the time budget survive re-queues and worker changes.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from jobstore import states
from jobstore.db.models import Job, utcnow
from jobstore.db.session import session_scope
from jobstore.events import status_events
from jobstore.settings import Settings
from worker import lease
from worker.stopping import StopSignal

log = logging.getLogger(__name__)

INFRA_RETRY_REASON = "infrastructure error, retrying"


def is_job_error(exc: BaseException) -> bool:
    from celif_core.errors import DataError, TrainingError, is_out_of_memory
    from celif_core.spec import SpecError

    # Out of memory is the job's own error: a retry would ask for the same memory again.
    return isinstance(exc, (TrainingError, DataError, SpecError)) or is_out_of_memory(exc)


def job_error_message(exc: BaseException) -> str:
    from celif_core.errors import is_out_of_memory

    if is_out_of_memory(exc):
        # torch's allocator message is long (a C++ frame); its first line has the size asked for.
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return (
            f"out of memory: {first}; the job needs more memory than this worker has "
            f"(lower batch_size, eval_batch_size, hidden, te_length or the sequence length)"
        )
    return str(exc)


def infra_cause(exc: BaseException) -> str:
    """What failed, for counting retries: storage, database, device or other."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, (OperationalError, DBAPIError)):
        return "database"
    if isinstance(exc, OSError):
        return "storage"
    text = str(exc)
    if "CUDA" in text or "cuda" in text or "device" in text.lower():
        return "device"
    return "other"


def backoff_delay(retries: int, settings: Settings) -> float:
    """Seconds before retry number `retries + 1`: exponential, capped, with full jitter in
    [0.5, 1] of the step (several jobs hit by one outage do not retry in lockstep)."""
    step = min(settings.infra_retry_max_delay_s, settings.infra_retry_base_s * 2.0**retries)
    return step * random.uniform(0.5, 1.0)


@dataclass
class InfraHistory:
    """The job's earlier infrastructure retries."""

    retries: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    first_at: datetime | None = None


def infra_history(session: Session, job_id: str) -> InfraHistory:
    history = InfraHistory()
    for data, at in status_events(session, job_id):
        if data.get("reason") != INFRA_RETRY_REASON:
            continue
        history.retries += 1
        cause = data.get("cause", "other")
        history.counts[cause] = history.counts.get(cause, 0) + 1
        if history.first_at is None:
            history.first_at = at
    return history


DB_RETRY_INTERVAL_S = 1.0


def settle_error(
    exc: Exception, settings: Settings, job_id: str, worker_id: str, stop: StopSignal
) -> str:
    """Fail or re-queue the job after `exc` and commit; returns the outcome ("failed",
    "requeued", "cancelled", "lease_lost"). Raises when the database cannot record it.

    A database that does not answer is waited for, up to `stale_after_s`: a restart or a
    fail-over of a few seconds (the usual cause of `exc` then) ends as an infrastructure retry
    with the claim given back, not as a lost worker counted against `max_infra_retries`.
    Meanwhile the heartbeat thread keeps trying to refresh the lease; should the reaper
    re-queue the job first, the next try finds the lease lost and writes nothing.
    """
    deadline = time.monotonic() + settings.stale_after_s
    while True:
        try:
            return _settle_error(exc, settings, job_id, worker_id, stop)
        except OperationalError:
            if time.monotonic() >= deadline:
                # Leave the lease to go stale; the reaper re-queues (or fails) the job once
                # the database answers again.
                log.exception(
                    "job %s: could not record the error; leaving it to the reaper", job_id
                )
                raise
            log.warning(
                "job %s: the database did not answer while recording the error; retrying in %ss",
                job_id,
                DB_RETRY_INTERVAL_S,
            )
            time.sleep(DB_RETRY_INTERVAL_S)


def _settle_error(
    exc: Exception, settings: Settings, job_id: str, worker_id: str, stop: StopSignal
) -> str:
    with session_scope(settings.database_url) as session:
        current = lease.load(session, job_id)
        if current is None or current.worker_id != worker_id:
            return "lease_lost"
        if is_job_error(exc):
            log.warning("job %s failed: %s", job_id, exc)
            lease.release(
                session,
                job_id,
                worker_id,
                "failed",
                error=job_error_message(exc),
                event={"error": str(exc), "kind": type(exc).__name__},
            )
            return "failed"
        cause = infra_cause(exc)
        reason = f"{type(exc).__name__}: {exc}"
        history = infra_history(session, job_id)
        counts = dict(history.counts)
        counts[cause] = counts.get(cause, 0) + 1
        first = history.first_at or utcnow()
        elapsed = (utcnow() - first).total_seconds()
        log.exception(
            "job %s: infrastructure error (%s; retry %d, %.0f s since the first)",
            job_id,
            cause,
            history.retries + 1,
            elapsed,
        )
        if elapsed > settings.infra_retry_budget_s:
            error = (
                f"infrastructure errors for {elapsed:.0f} s, over "
                f"infra_retry_budget_s={settings.infra_retry_budget_s:g} (retries by cause: "
                f"{counts}); last: {reason}"
            )
            lease.release(
                session,
                job_id,
                worker_id,
                "failed",
                error=error,
                event={"error": reason, "cause": cause, "counts": counts},
            )
            return "failed"
    delay = backoff_delay(history.retries, settings)
    # Wait here, holding the lease (the heartbeat thread keeps it fresh and still sees a
    # cancel), so the retry comes after the backoff; then hand the job back uncounted:
    # this bound is the time budget, not the worker-loss attempts.
    stop.wait(delay)
    with session_scope(settings.database_url) as session:
        if stop.reason == "cancel":
            row = lease.load(session, job_id)
            status, reason = states.stop_outcome(row.stop_reason if row else None)
            lease.release(session, job_id, worker_id, status, event={"reason": reason})
            return status
        job = lease.release(
            session,
            job_id,
            worker_id,
            "queued",
            attempts=Job.attempts - 1,
            event={
                "reason": INFRA_RETRY_REASON,
                "error": reason,
                "cause": cause,
                "retry": history.retries + 1,
                "counts": counts,
                "first_error_at": first.isoformat(),
                "backoff_s": round(delay, 3),
            },
        )
        if job is None:
            return "lease_lost"
    from jobstore.queue import enqueue_job

    enqueue_job(job_id)  # after the commit: the row is `queued` before its message
    return "requeued"
