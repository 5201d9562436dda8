"""init_from and uploaded checkpoints, end to end: real PostgreSQL, Redis, API and worker."""

from __future__ import annotations

import hashlib
import io
import os
import uuid

import httpx
import numpy as np
import pytest
from safetensors.numpy import save as np_save

from tests.worker.conftest import Client, Stack, WorkerProcess, adding_spec

DONE = {"succeeded", "failed", "cancelled"}


def _post(client: Client, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{client.base}{path}", headers=client.headers, timeout=60, **kwargs)


def _series(points, split, name):
    return [(p["step"], p["value"]) for p in points if p["split"] == split and p["name"] == name]


@pytest.fixture(scope="module")
def source(stack: Stack, api, token) -> dict:
    if not any(w.alive() for w in stack.workers):
        stack.workers.append(
            WorkerProcess(stack.env, stack.logs / f"worker-{len(stack.workers)}.log").start()
        )
    client = Client(stack, token)
    job = client.submit(adding_spec(max_steps=40, eval_every=20, checkpoint_every=20))
    done = client.wait_status(job["id"], DONE, timeout=240)
    assert done["status"] == "succeeded", done["error"]
    return done


def test_same_training_section_continues_the_run_exactly(client: Client, worker, source):
    """More budget, nothing else changed: steps 41..60 are a straight 60-step run's."""
    cont = client.submit(
        {**adding_spec(max_steps=60, eval_every=20, checkpoint_every=20),
         "init_from": {"job": source["id"], "checkpoint": "latest"}}
    )  # fmt: skip
    straight = client.submit(adding_spec(max_steps=60, eval_every=20, checkpoint_every=20))
    done = client.wait_status(cont["id"], DONE, timeout=240)
    ref = client.wait_status(straight["id"], DONE, timeout=240)
    assert done["status"] == ref["status"] == "succeeded", (done["error"], ref["error"])
    assert done["spec"]["init_from"] == {
        "job": source["id"],
        "checkpoint": "latest",
        "upload": None,
    }
    losses = _series(client.metrics(cont["id"]), "train", "loss")
    assert [s for s, _ in losses] == list(range(41, 61))  # went on from the source's step 40
    assert losses == _series(client.metrics(straight["id"]), "train", "loss")[40:]
    assert done["latest_metrics"]["test_mse"] == ref["latest_metrics"]["test_mse"]
    # The run's best: the straight run's, whether the continued job beat the source's or not.
    assert done["best_metrics"]["step"] == ref["best_metrics"]["step"]
    assert done["best_metrics"]["val_mse"] == ref["best_metrics"]["val_mse"]


def test_changed_training_section_starts_from_the_weights(client: Client, worker, source):
    """Another lr (tiny) is a new run from the source's weights: its first evaluation is the
    source's final one."""
    spec = adding_spec(max_steps=2, eval_every=1, checkpoint_every=2, lr=1e-9)
    job = client.submit({**spec, "init_from": {"job": source["id"], "checkpoint": "best"}})
    done = client.wait_status(job["id"], DONE, timeout=240)
    assert done["status"] == "succeeded", done["error"]
    val = _series(client.metrics(job["id"]), "val", "mse")
    assert val[0][0] == 1
    assert val[0][1] == pytest.approx(source["latest_metrics"]["val_mse"], rel=1e-4)
    fresh = client.wait_status(client.submit(spec)["id"], DONE, timeout=240)  # no init_from
    fresh_val = _series(client.metrics(fresh["id"]), "val", "mse")[0][1]
    assert fresh_val != pytest.approx(val[0][1], rel=1e-3)


def test_init_from_refusals(client: Client, stack: Stack, source):
    other = adding_spec(max_steps=5)
    other["model"] = {**other["model"], "hidden": [7]}
    r = _post(client, "/jobs", json={**other, "init_from": {"job": source["id"]}})
    assert r.status_code == 422, r.text
    err = r.json()["detail"][0]
    assert err["loc"] == ["body", "init_from"] and "model.hidden" in err["msg"]

    from service.auth.service import create_user_and_token

    with stack.session() as session:
        bob = Client(stack, create_user_and_token(session, f"bob-{uuid.uuid4().hex[:6]}"))
    r = _post(bob, "/jobs", json={**adding_spec(), "init_from": {"job": source["id"]}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "init_from", "job"]
    assert "not found" in r.json()["detail"][0]["msg"]
    r = _post(client, "/jobs", json={**adding_spec(), "init_from": {"upload": "nope"}})
    assert r.status_code == 422 and "not found" in r.json()["detail"][0]["msg"]
    r = _post(client, "/jobs", json={**adding_spec(), "init_from": {}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "init_from"]


def test_uploaded_checkpoint_round_trip_and_refusals(client: Client, worker, source, stack):
    blob = client.get(f"/jobs/{source['id']}/checkpoints/best").content
    r = _post(client, "/checkpoints", files={"file": ("best.safetensors", blob)})
    assert r.status_code == 201, r.text
    up = r.json()
    assert up["sha256"] == hashlib.sha256(blob).hexdigest() and up["size_bytes"] == len(blob)
    assert up["spec"]["model"] == source["spec"]["model"] and up["step"] > 0

    spec = adding_spec(max_steps=1, eval_every=1, checkpoint_every=1, lr=1e-9)
    job = client.submit({**spec, "init_from": {"upload": up["id"]}})
    done = client.wait_status(job["id"], DONE, timeout=240)
    assert done["status"] == "succeeded", done["error"]
    val = _series(client.metrics(job["id"]), "val", "mse")
    assert val[0][1] == pytest.approx(source["best_metrics"]["val_mse"], rel=1e-4)

    uploads = stack.env["CELIF_DATA_DIR"] + "/storage/uploads"

    before = sorted(os.listdir(uploads))
    no_spec = np_save({"model.w": np.zeros(3, np.float32)}, metadata={"other": "x"})
    for payload, why in ((b"not a checkpoint at all", "safetensors"), (no_spec, "metadata")):
        r = _post(client, "/checkpoints", files={"file": ("x.safetensors", io.BytesIO(payload))})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "file"] and why in r.text
    assert sorted(os.listdir(uploads)) == before  # nothing stored on refusal


def test_killed_init_from_job_resumes_from_its_own_checkpoint(client: Client, stack, source):
    """Once it has a checkpoint of its own, a re-queued init_from job resumes from that one."""
    from tests.worker.conftest import wait_for
    from tests.worker.test_jobs import assert_complete_series, checkpoint_rows, job_row

    spec = adding_spec(max_steps=600, eval_every=50, checkpoint_every=50, lr=0.004)
    live = [w for w in stack.workers if w.alive()]
    worker = live[0] if live else None
    if worker is None:
        worker = WorkerProcess(stack.env, stack.logs / f"worker-{len(stack.workers)}.log").start()
        stack.workers.append(worker)
    job = client.submit({**spec, "init_from": {"job": source["id"]}})
    jid = job["id"]

    def own_checkpoint():
        rows = checkpoint_rows(stack, jid)
        return rows and job_row(stack, jid).status == "running" and rows[-1].step

    ckpt_step = wait_for(own_checkpoint, 120, "the job's own first checkpoint")
    assert job_row(stack, jid).step < 600
    worker.kill()
    fresh = WorkerProcess(stack.env, stack.logs / f"worker-{len(stack.workers)}.log").start()
    stack.workers.append(fresh)
    done = client.wait_status(jid, DONE, timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2 and done["progress"]["step"] == 600
    from sqlalchemy import select

    from jobstore.db.models import JobEvent

    with stack.session() as s:
        runs = s.scalars(
            select(JobEvent).where(JobEvent.job_id == jid, JobEvent.kind == "status")
            .order_by(JobEvent.id)
        ).all()  # fmt: skip
    running = [e.data for e in runs if e.data["status"] == "running"]
    assert running[0].get("resumed_from_step") is None  # first run: from the source's weights
    assert running[-1]["resumed_from_step"] >= ckpt_step  # second: from its own checkpoint
    assert_complete_series(client.metrics(jid), 600, 50)
