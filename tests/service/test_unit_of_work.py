"""The unit of work owns the commit (jobstore/db/session.py): follow-ups registered with
`after_commit` run only once the row is committed; `after_rollback` undoes side effects."""

from __future__ import annotations

import pytest

from jobstore.db.models import User
from jobstore.db.session import after_commit, after_rollback, get_sessionmaker, transaction


def test_after_commit_sees_the_committed_row_and_never_runs_on_rollback(db):
    factory = get_sessionmaker(db)
    seen: list[object] = []

    def look(user_id: str) -> None:  # from another session: the row must already be committed
        with factory() as other:
            seen.append(other.get(User, user_id))

    with transaction(factory) as session:
        user = User(name="uow-ok")
        session.add(user)
        session.flush()
        after_commit(session, lambda: look(user.id))
        after_rollback(session, lambda: seen.append("rolled back"))
    assert len(seen) == 1 and seen[0] is not None and seen[0].name == "uow-ok"

    seen.clear()
    with pytest.raises(RuntimeError):
        with transaction(factory) as session:
            user = User(name="uow-no")
            session.add(user)
            session.flush()
            after_commit(session, lambda: seen.append("committed"))
            after_rollback(session, lambda: seen.append("rolled back"))
            raise RuntimeError("the request failed")
    assert seen == ["rolled back"]


def test_a_failing_follow_up_does_not_undo_the_commit(db):
    factory = get_sessionmaker(db)

    def boom() -> None:
        raise OSError("broker down")

    with transaction(factory) as session:
        user = User(name="uow-follow-up")
        session.add(user)
        session.flush()
        after_commit(session, boom)
        user_id = user.id
    with factory() as other:
        assert other.get(User, user_id) is not None


def test_a_submitted_job_is_enqueued_after_its_row_commits(client, db, monkeypatch):
    from jobstore.db.models import Job
    from service.jobs import service as jobs_service

    from .helpers import small_spec

    factory = get_sessionmaker(db)
    found: list[str | None] = []

    def fake_enqueue(job_id: str, settings=None) -> bool:
        with factory() as other:
            row = other.get(Job, job_id)
            found.append(None if row is None else row.status)
        return True

    monkeypatch.setattr(jobs_service, "try_enqueue_job", fake_enqueue)
    r = client.post("/api/v1/jobs", json=small_spec())
    assert r.status_code == 201, r.text
    assert found == ["queued"]
