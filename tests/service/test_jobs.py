"""Submit, read, list, filter, paginate, validate, cancel: the jobs API over real HTTP."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from jobstore.db.models import Job, JobEvent
from jobstore.db.session import session_scope
from jobstore.states import transition

from .helpers import small_spec


def job_count(db: str) -> int:
    with session_scope(db) as s:
        return s.scalar(select(func.count()).select_from(Job))


def test_submit_returns_job_with_defaults_and_enqueues(client, db, redis_db):
    before = redis_db.llen("celif")
    r = client.post("/api/v1/jobs", json=small_spec())
    assert r.status_code == 201, r.text
    job = r.json()
    assert r.headers["location"] == f"/api/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["name"] == "adding-20"
    assert job["task"] == "adding" and job["neuron"] == "celif"
    # defaults filled in
    assert job["spec"]["model"]["neuron_params"]["alpha"] == 0.5
    assert job["spec"]["model"]["neuron_params"]["ce_mode"] == "membrane_te"
    assert job["spec"]["training"]["lr"] == 0.0005
    assert job["progress"] == {
        "step": 0, "max_steps": 200, "fraction": 0.0, "epoch": None, "max_epochs": None
    }  # fmt: skip
    assert job["attempts"] == 0 and job["error"] is None
    assert job["links"]["events"] == f"/api/v1/jobs/{job['id']}/events"
    # a message for the worker, carrying only the id
    assert redis_db.llen("celif") == before + 1
    # the queued transition was recorded as an event
    with session_scope(db) as s:
        ev = s.scalars(select(JobEvent).where(JobEvent.job_id == job["id"])).all()
    assert [(e.kind, e.data["status"]) for e in ev] == [("status", "queued")]

    got = client.get(f"/api/v1/jobs/{job['id']}")
    assert got.status_code == 200
    assert got.json()["spec"] == job["spec"]


@pytest.mark.parametrize(
    ("spec", "loc"),
    [
        (small_spec(task={"name": "sudoku", "params": {}}), ["body", "task", "name"]),
        (small_spec(model={"neuron": "hodgkin"}), ["body", "model", "neuron"]),
        (small_spec(model={"hidden": [16, -4]}), ["body", "model", "hidden", 1]),
        (small_spec(training={"batch_size": -1}), ["body", "training", "batch_size"]),
        (
            small_spec(task={"name": "adding", "params": {"seq_len": -5}}),
            ["body", "task", "params", "seq_len"],
        ),
        # the TE table is shorter than the sequence
        (small_spec(model={"te_length": 10}), ["body", "model", "te_length"]),
        # a batch that cannot fit the activation-memory limit
        (
            small_spec(
                task={"name": "adding", "params": {"seq_len": 100000}},
                model={"hidden": [4096, 4096]},
                training={"batch_size": 8192},
            ),
            ["body", "training", "batch_size"],
        ),
        # resource limits (settings.spec_limits): what no worker could allocate
        (
            small_spec(model={"hidden": [4096], "te_length": 1_000_000_000}),
            ["body", "model", "te_length"],
        ),
        (
            small_spec(
                task={
                    "name": "adding",
                    "params": {"seq_len": 100_000, "val_size": 100_000, "test_size": 10},
                }
            ),
            ["body", "task", "params", "val_size"],
        ),
        (
            small_spec(
                task={
                    "name": "adding",
                    "params": {"seq_len": 100_000, "val_size": 10, "test_size": 100_000},
                }
            ),
            ["body", "task", "params", "test_size"],
        ),
        (
            small_spec(
                task={"name": "adding", "params": {"seq_len": 100_000}},
                model={"hidden": [4096, 4096]},
                training={"batch_size": 1, "eval_batch_size": 8192},
            ),
            ["body", "training", "eval_batch_size"],
        ),
        (
            small_spec(model={"neuron": "lstm", "hidden": [4096] * 8}),
            ["body", "model", "hidden"],
        ),
        (
            small_spec(model={"neuron_params": {"alpha": 2}}),
            ["body", "model", "neuron_params", "alpha"],
        ),
        (small_spec(bogus=1), ["body", "bogus"]),
    ],
)
def test_bad_spec_is_422_naming_the_field_and_nothing_is_queued(client, db, redis_db, spec, loc):
    before = redis_db.llen("celif")
    r = client.post("/api/v1/jobs", json=spec)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, list) and detail
    assert detail[0]["loc"] == loc, detail
    assert detail[0]["msg"] and detail[0]["type"]
    assert job_count(db) == 0
    assert redis_db.llen("celif") == before


def test_epoch_budget_job_reports_steps_and_epochs(client, db):
    spec = {
        "task": {"name": "seq_mnist", "params": {"val_size": 1000}},
        "training": {"max_epochs": 2, "lr_schedule": "step", "lr_step_epochs": 1},
    }
    r = client.post("/api/v1/jobs", json=spec)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["spec"]["training"]["max_steps"] is None
    assert job["progress"] == {
        "step": 0,
        "max_steps": 461,
        "fraction": 0.0,
        "epoch": 0.0,
        "max_epochs": 2,
    }  # fmt: skip  (ceil(2 * 59000 / 256) = 461)
    dry = client.post("/api/v1/jobs:validate", json=spec).json()
    assert dry["estimate"]["total_steps"] == 461 and dry["estimate"]["train_size"] == 59000


@pytest.mark.parametrize(
    ("task", "training", "field"),
    [
        ("seq_mnist", {"max_steps": 10, "max_epochs": 2}, "max_epochs"),
        ("adding", {"max_epochs": 2}, "max_epochs"),
        ("copy_memory", {"lr_schedule": "step"}, "lr_schedule"),
    ],
)
def test_budget_errors_are_422_naming_the_field(client, db, task, training, field):
    before = job_count(db)
    r = client.post("/api/v1/jobs", json={"task": {"name": task}, "training": training})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "training", field]
    assert job_count(db) == before


def test_non_object_body_is_422(client, db):
    r = client.post("/api/v1/jobs", json=[1, 2])
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"][0] == "body"
    assert job_count(db) == 0


def test_unknown_dataset_is_422(client, db):
    r = client.post(
        "/api/v1/jobs", json=small_spec(task={"name": "dataset", "params": {"dataset_id": "nope"}})
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "task", "params", "dataset_id"]


def test_validate_and_dry_run_store_nothing(client, db, redis_db):
    before = redis_db.llen("celif")
    for r in (
        client.post("/api/v1/jobs:validate", json=small_spec()),
        client.post("/api/v1/jobs", params={"dry_run": "true"}, json=small_spec()),
    ):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["valid"] is True
        assert body["spec"]["training"]["optimizer"] == "adam"
        est = body["estimate"]
        assert est["seq_len"] == 20 and est["parameters"] > 0 and est["activation_bytes"] > 0
    assert job_count(db) == 0
    assert redis_db.llen("celif") == before
    bad = client.post("/api/v1/jobs:validate", json=small_spec(model={"neuron": "x"}))
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "model", "neuron"]


def test_unknown_job_is_404(client):
    for path in ("", "/metrics", "/events", "/checkpoints", "/checkpoints/latest", "/curves.png"):
        r = client.get(f"/api/v1/jobs/0123456789abcdef{path}")
        assert r.status_code == 404, (path, r.text)
        assert "detail" in r.json()
    assert client.post("/api/v1/jobs/nope/cancel").status_code == 404


def test_other_users_job_is_404(client, bob):
    job = client.post("/api/v1/jobs", json=small_spec()).json()
    for path in ("", "/metrics", "/events", "/checkpoints", "/checkpoints/latest", "/curves.svg"):
        r = bob.get(f"/api/v1/jobs/{job['id']}{path}")
        assert r.status_code == 404, (path, r.text)
    assert bob.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 404
    assert bob.get("/api/v1/jobs").json()["items"] == []
    # and it was not cancelled by bob's attempt
    assert client.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "queued"


def test_list_filters_and_cursor_pagination(client, bob, db):
    ids = []
    for i in range(5):
        spec = small_spec(name=f"j{i}")
        if i % 2:
            spec["model"] = {"neuron": "lif", "hidden": [8]}
        ids.append(client.post("/api/v1/jobs", json=spec).json()["id"])
    copy_job = client.post(
        "/api/v1/jobs",
        json=small_spec(task={"name": "copy_memory", "params": {"delay": 5}}, name="copy"),
    ).json()
    bob.post("/api/v1/jobs", json=small_spec(name="bobs"))
    client.post(f"/api/v1/jobs/{ids[0]}/cancel")

    every = client.get("/api/v1/jobs").json()
    assert every["next_cursor"] is None
    assert [j["id"] for j in every["items"]] == [copy_job["id"], *reversed(ids)]  # newest first

    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [j["id"] for j in every["items"]]  # no gap, no duplicate

    lif = client.get("/api/v1/jobs", params={"neuron": "lif"}).json()["items"]
    assert {j["id"] for j in lif} == {ids[1], ids[3]}
    copy = client.get("/api/v1/jobs", params={"task": "copy_memory"}).json()["items"]
    assert [j["id"] for j in copy] == [copy_job["id"]]
    cancelled = client.get("/api/v1/jobs", params={"status": "cancelled"}).json()["items"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    both = client.get("/api/v1/jobs", params={"status": "cancelled,queued"}).json()["items"]
    assert len(both) == 6
    repeated = client.get("/api/v1/jobs", params=[("neuron", "lif"), ("neuron", "celif")])
    assert len(repeated.json()["items"]) == 6
    assert client.get("/api/v1/jobs", params={"cursor": "%%%"}).status_code == 400
    assert client.get("/api/v1/jobs", params={"limit": 0}).status_code == 422


def test_idempotency_key_replay_returns_same_job(client, bob, db, redis_db):
    before = redis_db.llen("celif")
    headers = {"Idempotency-Key": "submit-1"}
    first = client.post("/api/v1/jobs", json=small_spec(), headers=headers)
    again = client.post("/api/v1/jobs", json=small_spec(), headers=headers)
    assert first.status_code == 201 and again.status_code == 201
    assert again.headers.get("idempotent-replayed") == "true"
    assert first.json()["id"] == again.json()["id"]
    assert job_count(db) == 1
    assert redis_db.llen("celif") == before + 1  # queued once
    # the same key with another spec is a conflict, not a silent replay
    other = client.post("/api/v1/jobs", json=small_spec(name="other"), headers=headers)
    assert other.status_code == 409
    # keys are per user: bob's "submit-1" is his own job
    bobs = bob.post("/api/v1/jobs", json=small_spec(), headers=headers)
    assert bobs.status_code == 201 and bobs.json()["id"] != first.json()["id"]
    assert job_count(db) == 2


def test_idempotency_key_under_concurrency_makes_one_job(server, tokens, db, redis_db):
    import httpx

    before = redis_db.llen("celif")

    def post(_):
        with httpx.Client(base_url=server.url, timeout=30) as c:
            return c.post(
                "/api/v1/jobs",
                json=small_spec(),
                headers={"Authorization": f"Bearer {tokens.alice}", "Idempotency-Key": "race"},
            )

    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(post, range(10)))
    assert all(r.status_code == 201 for r in responses), [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert job_count(db) == 1
    assert redis_db.llen("celif") == before + 1


def test_cancel_queued_job(client, db):
    job = client.post("/api/v1/jobs", json=small_spec()).json()
    r = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "cancelled"
    assert body["finished_at"] is not None
    with session_scope(db) as s:
        statuses = [
            e.data["status"]
            for e in s.scalars(
                select(JobEvent).where(JobEvent.job_id == job["id"]).order_by(JobEvent.id)
            )
        ]
    assert statuses == ["queued", "cancelled"]
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 409


def test_cancel_running_job_requests_stop(client, db):
    job = client.post("/api/v1/jobs", json=small_spec()).json()
    with session_scope(db) as s:
        transition(s, job["id"], "running", event={"worker": "w1"}, worker_id="w1")
    r = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "running"
    assert r.json()["cancel_requested"] is True
    assert r.json()["started_at"] is not None


def test_every_mistake_is_reported_at_once(client, db):
    spec = small_spec(model={"hiden": [16]}, training={"batch_size": 0})
    r = client.post("/api/v1/jobs", json=spec)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert [e["loc"] for e in detail] == [
        ["body", "model", "hiden"],
        ["body", "training", "batch_size"],
    ]
    assert "did you mean 'hidden'?" in detail[0]["msg"]
    assert job_count(db) == 0


def test_a_stored_spec_can_be_submitted_again(client, db):
    """GET a job, POST its `spec` back (a rerun, or the start of a continued run): the stored
    spec, defaults and `"recipe": null` included, is a valid submission of the same job."""
    first = client.post("/api/v1/jobs", json=small_spec()).json()
    again = client.post("/api/v1/jobs", json=first["spec"])
    assert again.status_code == 201, again.text
    assert again.json()["spec"] == first["spec"] and again.json()["id"] != first["id"]
    by_recipe = client.post("/api/v1/jobs", json={"recipe": "demo/adding-tiny"}).json()
    again = client.post("/api/v1/jobs", json=by_recipe["spec"])
    assert again.status_code == 201, again.text
    assert again.json()["spec"] == by_recipe["spec"]
