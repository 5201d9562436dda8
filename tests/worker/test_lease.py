"""Lease transitions and the reaper, in-process against the real PostgreSQL test database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select

from jobstore.db.models import Job, JobEvent, utcnow
from jobstore.settings import Settings
from service.auth.service import get_or_create_user
from worker import lease
from worker.reaper import reap_once

from .conftest import Stack, fresh_database


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Iterator[Stack]:
    """A database of this module's own, with no worker processes. The session-wide stack's
    workers each run a reaper every second; on its database they would race the reapers and
    claims these tests drive (a stale test job reaped by a worker first, a queued one re-sent)."""
    with fresh_database("celif_lease") as url:
        data = tmp_path_factory.mktemp("lease-data")
        yield Stack(url, {}, data, tmp_path_factory.mktemp("lease-logs"))


@pytest.fixture()
def make_job(db):
    def make(status="queued", heartbeat_age_s=None, attempts=0, cancel=False) -> str:
        with db.session() as s:
            user = get_or_create_user(s, "lease-tests")
            job = Job(
                owner_id=user.id,
                task_name="adding",
                neuron="celif",
                spec={},
                max_steps=10,
                status=status,
                attempts=attempts,
                cancel_requested=cancel,
                worker_id="dead-host:1" if status == "running" else None,
                heartbeat_at=None
                if heartbeat_age_s is None
                else utcnow() - timedelta(seconds=heartbeat_age_s),
            )
            s.add(job)
            s.flush()
            return job.id

    return make


def _settings(db, **kw) -> Settings:
    return Settings(
        database_url=db.database_url,
        broker_url="redis://127.0.0.1:6379/0",
        data_dir=db.data_dir,
        stale_after_s=30,
        max_infra_retries=2,
        **kw,
    )


def _statuses(db, job_id):
    with db.session() as s:
        return [
            e.data["status"]
            for e in s.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.kind == "status")
                .order_by(JobEvent.id)
            )
        ]


def test_claim_is_won_by_exactly_one(db, make_job):
    job_id = make_job()
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def contend(i: int) -> None:
        barrier.wait()
        with db.session() as s:
            if lease.claim(s, job_id, f"w{i}", stale_after_s=30) is not None:
                winners.append(f"w{i}")

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    with db.session() as s:
        job = s.get(Job, job_id)
        assert (job.status, job.worker_id, job.attempts) == ("running", winners[0], 1)
        # A live lease is never taken over; a stale one is.
        assert lease.claim(s, job_id, "other", stale_after_s=30) is None
        job.heartbeat_at = utcnow() - timedelta(seconds=60)
    with db.session() as s:
        assert lease.claim(s, job_id, "other", stale_after_s=30).attempts == 2


def test_claim_and_reaper_that_waited_on_a_lock_judge_the_lease_by_one_clock(db, make_job):
    """A host cut off inside a transaction holds its job's row lock (until TCP keepalives end
    its session); another host's claim of the stale lease and a reaper's release both wait
    behind it. The claim, first in line, takes the job; the reaper, which started waiting
    later than the lease timeout after the claim did, must then see a fresh lease, not re-queue
    the new claim (leases are written and judged by the database's clock at execution)."""
    from sqlalchemy import text

    job_id = make_job("running", heartbeat_age_s=120, attempts=1)
    stale_after_s = 1.0
    outcome: dict[str, object] = {}
    with db.session() as holder:  # the cut-off host's open transaction on the row
        holder.execute(text("SELECT 1 FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})

        def claim() -> None:
            with db.session() as s:
                outcome["claim"] = lease.claim(s, job_id, "host-b:1", stale_after_s) is not None

        def reap() -> None:
            with db.session() as s:
                job = lease.release(s, job_id, None, "queued", stale_after_s=stale_after_s)
                outcome["reaped"] = job is not None

        claimer = threading.Thread(target=claim)
        claimer.start()
        _wait_for_lock_waiters(db, 1)
        time.sleep(2 * stale_after_s)  # the reaper starts well after the claim began waiting
        reaper = threading.Thread(target=reap)
        reaper.start()
        _wait_for_lock_waiters(db, 2)
    # the holder's transaction ends here: the claim goes first, then the reaper re-checks
    claimer.join(30)
    reaper.join(30)
    assert not claimer.is_alive() and not reaper.is_alive()
    assert outcome == {"claim": True, "reaped": False}, (outcome, _statuses(db, job_id))
    with db.session() as s:
        job = s.get(Job, job_id)
        assert (job.status, job.worker_id, job.attempts) == ("running", "host-b:1", 2)


def _wait_for_lock_waiters(db, n: int, timeout_s: float = 30.0) -> None:
    """Until `n` backends of this database wait on a lock (bounded)."""
    from sqlalchemy import text

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with db.session() as s:
            waiting = s.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        if waiting >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} sessions waited on the row lock within {timeout_s} s")


def test_reaper_requeues_fails_and_cancels_stale_jobs(db, make_job):
    live = make_job("running", heartbeat_age_s=1, attempts=1)
    stale = make_job("running", heartbeat_age_s=120, attempts=1)
    exhausted = make_job("running", heartbeat_age_s=120, attempts=3)
    cancelled = make_job("running", heartbeat_age_s=120, attempts=1, cancel=True)
    sent: list[str] = []
    result = reap_once(_settings(db), enqueue=sent.append)
    assert stale in result.requeued and stale in sent
    assert exhausted in result.failed and exhausted not in sent
    assert cancelled in result.cancelled and cancelled not in sent
    assert live not in result.requeued + result.failed + result.cancelled
    with db.session() as s:
        assert s.get(Job, stale).status == "queued" and s.get(Job, stale).worker_id is None
        assert s.get(Job, exhausted).status == "failed"
        assert "worker lost 3 times" in s.get(Job, exhausted).error
        assert s.get(Job, cancelled).status == "cancelled"
        assert s.get(Job, live).status == "running"
    assert _statuses(db, stale) == ["queued"]
    # A second pass (or a second reaper) finds nothing left to do.
    again = reap_once(_settings(db), enqueue=sent.append)
    assert not (set(again.requeued) | set(again.failed)) & {stale, exhausted, cancelled}


def test_released_lease_cannot_write(db, make_job):
    job_id = make_job()
    with db.session() as s:
        lease.claim(s, job_id, "me", stale_after_s=30)
    with db.session() as s:  # the reaper (or the API) took it away
        s.get(Job, job_id).worker_id = "someone-else"
    with db.session() as s:
        assert not lease.heartbeat(s, job_id, "me", step=5)
        assert lease.release(s, job_id, "me", "succeeded") is None
    with db.session() as s:
        assert s.get(Job, job_id).status == "running"


def test_infrastructure_error_is_retried_then_fails(db, make_job, tmp_path, monkeypatch):
    """An OSError (here: the checkpoint folder cannot be created) re-queues the job, after the
    commit and after an exponential backoff with jitter, counted per cause in the status
    events; once the first error is older than `infra_retry_budget_s` the job fails with the
    reason and the counts. Retries give their claim back: `attempts` counts worker losses."""
    import jobstore.queue
    from worker.runner import JobRunner

    from .conftest import adding_spec

    sent: list[str] = []
    monkeypatch.setattr(jobstore.queue, "enqueue_job", sent.append)
    job_id = make_job()
    with db.session() as s:
        s.get(Job, job_id).spec = adding_spec()
    settings = Settings(
        database_url=db.database_url,
        broker_url="redis://127.0.0.1:6379/0",
        data_dir=tmp_path,
        max_infra_retries=2,
        infra_retry_base_s=0.01,
        infra_retry_max_delay_s=0.08,
        infra_retry_budget_s=0.6,
    )
    blocker = tmp_path / "storage" / "checkpoints" / job_id
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")  # mkdir fails: an OSError, i.e. infrastructure

    outcomes = []
    while not outcomes or outcomes[-1] == "requeued":
        outcomes.append(JobRunner(job_id, settings).run())
        assert len(outcomes) < 100
    assert outcomes[-1] == "failed" and len(outcomes) >= 4, outcomes
    assert sent == [job_id] * (len(outcomes) - 1)
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job.status == "failed" and job.attempts == 1  # retries gave their claim back
        assert "infra_retry_budget_s=0.6" in job.error and "'storage'" in job.error
        assert "FileExistsError" in job.error
        retries = [
            e.data
            for e in s.scalars(
                select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            )
            if (e.data or {}).get("reason") == "infrastructure error, retrying"
        ]
    assert [r["retry"] for r in retries] == list(range(1, len(retries) + 1))
    assert [r["counts"]["storage"] for r in retries] == [r["retry"] for r in retries]
    for r in retries:  # exponential, capped, jittered into [0.5, 1] of the step
        step = min(0.08, 0.01 * 2 ** (r["retry"] - 1))
        assert 0.5 * step <= r["backoff_s"] <= step + 1e-3, r
    assert _statuses(db, job_id) == ["running", "queued"] * (len(outcomes) - 1) + [
        "running",
        "failed",
    ]
    # A late duplicate message for the finished job is a no-op.
    assert JobRunner(job_id, settings).run() == "skipped"
