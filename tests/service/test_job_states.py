"""The job state machine (jobstore/states.py): one table of allowed transitions, enforced by
the conditional UPDATE every writer (API, worker, reaper) goes through."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from jobstore.db.models import JOB_STATES, TERMINAL_STATES, Job, JobEvent
from jobstore.db.session import session_scope
from jobstore.states import ALLOWED, IllegalTransition, can_follow, predecessors, transition

from .helpers import small_spec


def submit(client) -> str:
    r = client.post("/api/v1/jobs", json=small_spec())
    assert r.status_code == 201, r.text
    return r.json()["id"]


def statuses(db: str, job_id: str) -> list[str]:
    with session_scope(db) as s:
        rows = s.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "status")
        ).all()
        return [r.data["status"] for r in rows]


def test_the_table():
    assert set(ALLOWED) == set(JOB_STATES)
    for done in TERMINAL_STATES:
        assert ALLOWED[done] == frozenset() and not can_follow(done, "queued")
    assert not can_follow("queued", "succeeded") and not can_follow("queued", "failed")
    assert can_follow("running", "queued") and can_follow("running", "running")
    assert set(predecessors("cancelled")) == {"waiting", "queued", "running"}
    # a study's held-back trial is released to the queue, never claimed directly
    assert set(predecessors("queued")) == {"waiting", "running"}
    assert set(predecessors("stopped_early")) == {"running"}


@pytest.mark.parametrize("final", TERMINAL_STATES)
def test_a_finished_job_never_moves_again(client, db, final):
    job_id = submit(client)
    with session_scope(db) as s:
        assert transition(s, job_id, "running", worker_id="w1") is not None
        assert transition(s, job_id, final) is not None
    for target in JOB_STATES:
        with session_scope(db) as s:
            assert transition(s, job_id, target) is None
    with session_scope(db) as s:
        job = s.get(Job, job_id)
        assert job.status == final and job.finished_at is not None
    assert statuses(db, job_id) == ["queued", "running", final]


def test_a_queued_job_cannot_finish_without_running(client, db):
    job_id = submit(client)
    with session_scope(db) as s:
        assert transition(s, job_id, "succeeded") is None
        assert transition(s, job_id, "failed", error="x") is None
        assert s.get(Job, job_id).status == "queued"
    assert statuses(db, job_id) == ["queued"]


def test_the_callers_condition_and_a_race(client, db):
    job_id = submit(client)
    with session_scope(db) as s:
        assert transition(s, job_id, "running", worker_id="w1") is not None
    # Two writers that both saw `running`: the first wins, the second's condition fails.
    with session_scope(db) as s:
        assert transition(s, job_id, "queued", where=Job.worker_id == "w1") is not None
    with session_scope(db) as s:
        assert transition(s, job_id, "failed", where=Job.worker_id == "w1") is None
        job = s.get(Job, job_id)
        assert job.status == "queued" and job.worker_id is None and job.heartbeat_at is None


def test_only_status_related_columns_may_change(client, db):
    job_id = submit(client)
    with session_scope(db) as s:
        with pytest.raises(IllegalTransition, match="may not write"):
            transition(s, job_id, "running", spec={"hacked": True})
        with pytest.raises(IllegalTransition, match="unknown job status"):
            transition(s, job_id, "paused")


def test_cancel_through_the_api_is_a_transition(client, db):
    job_id = submit(client)
    before = client.get(f"/api/v1/jobs/{job_id}").json()
    assert before["can_cancel"] is True and before["finished"] is False
    after = client.post(f"/api/v1/jobs/{job_id}/cancel").json()
    assert after["status"] == "cancelled" and after["finished"] and not after["can_cancel"]
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 409
    assert statuses(db, job_id) == ["queued", "cancelled"]
