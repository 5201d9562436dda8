"""The reaper: a job never stays `running` without a live worker (DESIGN.md §5).

Runs periodically in every worker's main process (a daemon thread) and in `celif serve`. Several
reapers may run at once: every transition is a conditional UPDATE, so each stale job is handled
once. A stale running job is re-queued (status `queued` + a status event, the message sent after
the commit) and its next worker resumes it from its last checkpoint; past `max_infra_retries`
re-queues it is failed instead. A queued job whose message was lost (broker down at submit, or a
filesystem-broker message taken by a worker that died before claiming it, a Redis restart) is
re-sent once it has been queued for `resend_queued_after_s` with its id in no message the broker
holds (see `_resend_lost`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select, update

from jobstore import states
from jobstore.db.models import Job, utcnow
from jobstore.db.session import session_scope
from jobstore.settings import Settings
from worker import lease

log = logging.getLogger(__name__)


@dataclass
class ReapResult:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)  # study trials moved from waiting
    stopped_early: list[str] = field(default_factory=list)  # asked to stop by their study


def reap_once(settings: Settings, *, enqueue=None) -> ReapResult:
    """One pass. `enqueue(job_id)` sends the task (default: jobstore.queue.enqueue_job)."""
    if enqueue is None:
        from jobstore.queue import enqueue_job as enqueue
    out = ReapResult()
    url = settings.database_url
    with session_scope(url) as session:
        stale = session.execute(
            select(
                Job.id, Job.attempts, Job.cancel_requested, Job.worker_id, Job.stop_reason
            ).where(Job.status == "running", lease.stale_lease(session, settings.stale_after_s))
        ).all()
    for job_id, attempts, cancel, worker_id, stop_reason in stale:
        with session_scope(url) as session:
            event = {"reason": "worker lost", "worker": worker_id, "attempts": attempts}
            if cancel:
                status, reason = states.stop_outcome(stop_reason)
                job = lease.release(
                    session,
                    job_id,
                    None,
                    status,
                    stale_after_s=settings.stale_after_s,
                    event={**event, "reason": f"{reason} (worker lost)"},
                )
                bucket = out.cancelled
            elif attempts > settings.max_infra_retries:
                error = f"worker lost {attempts} times; giving up (max_infra_retries={settings.max_infra_retries})"
                job = lease.release(
                    session,
                    job_id,
                    None,
                    "failed",
                    stale_after_s=settings.stale_after_s,
                    error=error,
                    event={**event, "error": error},
                )
                bucket = out.failed
            else:
                job = lease.release(
                    session,
                    job_id,
                    None,
                    "queued",
                    stale_after_s=settings.stale_after_s,
                    event=event,
                )
                bucket = out.requeued
        if job is None:
            continue  # another reaper, or the worker itself, got there first
        bucket.append(job_id)
        log.warning("reaper: job %s (worker %s lost) -> %s", job_id, worker_id, job.status)
        if job.status == "queued":
            enqueue(job_id)  # after the commit
    out.resent = _resend_lost(settings, enqueue)
    _studies_pass(settings, out)
    return out


def _studies_pass(settings: Settings, out: ReapResult) -> None:
    """Early stopping decided from the streamed metrics, then waiting trials released where a
    slot is free (a finishing trial releases the next itself; this catches what it skipped)."""
    from jobstore import studies

    with session_scope(settings.database_url) as session:
        ids = studies.studies_in_progress(session)
    for study_id in ids:
        with session_scope(settings.database_url) as session:
            out.stopped_early += studies.apply_early_stopping(session, study_id)
            out.released += studies.release_waiting(session, study_id, skip_locked=False)


def _resend_lost(settings: Settings, enqueue) -> list[str]:
    """Re-send queued jobs whose message is not in the broker.

    A message can be lost: the broker was down at submit, Redis restarted without persistence,
    its keys were deleted, a filesystem-broker message was taken by a worker that died before
    claiming it. A job queued since its last send for over `resend_queued_after_s` whose id is
    in no message the broker holds (waiting, or delivered less than `claim_within_s` ago and not
    yet acknowledged: a fresh pool child imports torch before it claims) is sent again. Should the
    message have been in flight after all, the duplicate is harmless: the claim is a conditional
    UPDATE, so the second delivery finds the job running (or done) and does nothing.
    `updated_at` records the last (re)send: re-queues, sends and re-sends all set it.
    """
    cutoff = utcnow() - timedelta(seconds=settings.resend_queued_after_s)
    with session_scope(settings.database_url) as session:
        ids = session.scalars(
            select(Job.id)
            .where(Job.status == "queued", Job.updated_at < cutoff)
            .order_by(Job.created_at)
            .limit(100)
        ).all()
    if not ids:
        return []
    held = job_ids_in_broker(settings)
    if held is None:
        return []  # the broker is down: nothing could be sent; try again next pass
    resent = []
    for job_id in ids:
        if job_id in held:
            continue
        with session_scope(settings.database_url) as session:
            # Claims this re-send: of several reapers, one sends.
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "queued", Job.updated_at < cutoff)
                .values(updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:
                continue
        enqueue(job_id)
        resent.append(job_id)
    if resent:
        log.warning(
            "reaper: re-sent %d queued job(s) whose message was not in the broker", len(resent)
        )
    return resent


def job_ids_in_broker(settings: Settings) -> set[str] | None:
    """Ids of the jobs whose message the broker holds; None when the broker cannot be reached."""
    from jobstore.queue import job_ids_in_broker as held

    try:
        return held(settings, delivered_within_s=settings.claim_within_s)
    except Exception:  # the broker is down
        log.debug("broker contents unavailable", exc_info=True)
        return None


def run_reaper(settings: Settings, stop: threading.Event) -> None:
    while not stop.wait(settings.reaper_interval_s):
        try:
            reap_once(settings)
        except Exception:
            log.exception("reaper pass failed; retrying in %ss", settings.reaper_interval_s)


def start_reaper_thread(settings: Settings) -> threading.Event:
    """Start the periodic reaper in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    threading.Thread(
        target=run_reaper, args=(settings, stop), name="celif-reaper", daemon=True
    ).start()
    return stop
