"""Another user's dataset looks exactly like a missing one wherever a dataset id is used:
submit (whatever facts the spec carries), samples, predict and the worker."""

from __future__ import annotations

import io

import numpy as np
from sqlalchemy import select

from jobstore.db.models import Job, User
from jobstore.db.session import session_scope


def _npz() -> bytes:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 20, 2)).astype(np.float32)
    y = (x[:, :, 0].mean(1) > 0).astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    return buf.getvalue()


def _upload(client) -> str:
    r = client.post(
        "/api/v1/datasets",
        files={"file": ("a.npz", _npz(), "application/octet-stream")},
        data={"name": "alice-private"},
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _spec(dataset_id: str) -> dict:
    # Every fact the resolver would fill is already in the spec: the old early return.
    return {
        "task": {
            "name": "dataset",
            "params": {
                "dataset_id": dataset_id,
                "seq_len": 20,
                "input_size": 2,
                "output_size": 2,
                "target": "per_sequence",
                "kind": "classification",
            },
        },
        "model": {"hidden": [16]},
        "training": {"max_steps": 20, "batch_size": 16},
    }


def _detail(r) -> str:
    body = r.json()["detail"]
    return body[0]["msg"] if isinstance(body, list) else body


def test_submit_with_full_facts_cannot_use_another_users_dataset(pclient, pbob, db):
    ds = _upload(pclient)
    missing = "0" * 32
    for path in ("/api/v1/jobs", "/api/v1/jobs:validate"):
        theirs = pbob.post(path, json=_spec(ds))
        nothing = pbob.post(path, json=_spec(missing))
        assert theirs.status_code == nothing.status_code == 422, theirs.text
        assert _detail(theirs) == _detail(nothing).replace(missing, ds)
        assert theirs.json()["detail"][0]["loc"] == ["body", "task", "params", "dataset_id"]
    # The owner may submit the same spec; the stored facts win over what the spec claims.
    lie = _spec(ds)
    lie["task"]["params"]["seq_len"] = 7
    r = pclient.post("/api/v1/jobs:validate", json=lie)
    assert r.status_code == 200, r.text
    assert r.json()["spec"]["task"]["params"]["seq_len"] == 20


def _job_of(db_url: str, owner: str, dataset_id: str) -> str:
    """A job row of `owner` on `dataset_id`, as one stored before ownership was checked."""
    with session_scope(db_url) as session:
        user = session.scalars(select(User).where(User.name == owner)).one()
        spec = _spec(dataset_id)
        job = Job(
            owner_id=user.id,
            task_name="dataset",
            neuron="celif",
            spec=spec,
            status="succeeded",
            step=20,
            max_steps=20,
        )
        session.add(job)
        session.flush()
        return job.id


def test_samples_and_predict_of_a_job_on_another_users_dataset_are_404(pclient, pbob, db):
    ds = _upload(pclient)
    job = _job_of(db, "bob", ds)
    gone = _job_of(db, "bob", "f" * 32)
    r = pbob.get(f"/api/v1/jobs/{job}/samples", params={"n": 20})
    r_gone = pbob.get(f"/api/v1/jobs/{gone}/samples", params={"n": 20})
    assert r.status_code == r_gone.status_code == 404, r.text
    assert r.json()["detail"] == r_gone.json()["detail"].replace("f" * 32, ds)
    x = np.zeros((1, 20, 2)).tolist()
    r = pbob.post(f"/api/v1/jobs/{job}/predict", json={"inputs": x})
    r_gone = pbob.post(f"/api/v1/jobs/{gone}/predict", json={"inputs": x})
    assert r.status_code == r_gone.status_code == 404, r.text
    assert r.json()["detail"] == r_gone.json()["detail"].replace("f" * 32, ds)
    # Alice's own job on it reads its rows.
    own = _job_of(db, "alice", ds)
    assert pclient.get(f"/api/v1/jobs/{own}/samples", params={"n": 4}).status_code == 200


def test_worker_refuses_a_job_on_another_users_dataset(pclient, db, psettings):
    """The worker's claim checks the owner too: the job fails with the missing-dataset reason."""
    from worker.runner import JobRunner

    ds = _upload(pclient)
    with session_scope(db) as session:
        bob = session.scalars(select(User).where(User.name == "bob")).one()
        job = Job(
            owner_id=bob.id, task_name="dataset", neuron="celif", spec=_spec(ds), max_steps=20
        )
        session.add(job)
        session.flush()
        job_id = job.id
    assert JobRunner(job_id, psettings).run() == "skipped"
    with session_scope(db) as session:
        row = session.get(Job, job_id)
        assert row.status == "failed"
        assert row.error == f"no dataset with id {ds!r}"
