"""Studies over real HTTP and a real database: validation as a whole, the concurrency cap and
its release on the finish path, cancel, extend, ownership, the comparison table and curves,
and the ASHA pass. Trials finish here through the same `jobstore.states` transitions a worker
makes (the worker suite runs them for real)."""

from __future__ import annotations

import csv
import io

from sqlalchemy import func, select

from jobstore import studies as study_repo
from jobstore.db.models import Job, JobEvent, Study
from jobstore.db.session import session_scope
from jobstore.events import append_metric_points
from jobstore.states import stop_outcome, transition
from worker import lease

from .helpers import small_spec

S = "/api/v1/studies"


def grid_study(**extra):
    return {
        "name": "lr-grid",
        "base": small_spec(),
        "search": {
            "type": "grid",
            "params": {"training.lr": [0.01, 0.001], "model.neuron_params.ce_mode": ["none", "te"]},
        },
        "objective": {"metric": "val_mse", "mode": "min"},
        "max_concurrent": 2,
        **extra,
    }


def counts(db: str) -> tuple[int, int]:
    with session_scope(db) as s:
        return (
            s.scalar(select(func.count()).select_from(Study)),
            s.scalar(select(func.count()).select_from(Job)),
        )


def statuses(client, study_id: str) -> list[str]:
    return [t["status"] for t in client.get(f"{S}/{study_id}").json()["trials"]]


def run_trial(db: str, job_id: str, *, points=(), final: str = "succeeded") -> None:
    """What a worker does to a trial: claim, stream metric points, finish."""
    with session_scope(db) as s:
        assert lease.claim(s, job_id, "w1", 30) is not None
    with session_scope(db) as s:
        append_metric_points(s, job_id, points)
        lease.heartbeat(s, job_id, "w1", step=max([p["step"] for p in points] or [0]))
    if final:
        with session_scope(db) as s:
            assert lease.release(s, job_id, "w1", final, event={}) is not None


def mse_points(values: dict[int, float]) -> list[dict]:
    return [{"step": k, "split": "val", "name": "mse", "value": v} for k, v in values.items()]


def test_grid_study_caps_concurrency_and_releases_on_finish(client, db, redis_db):
    before = redis_db.llen("celif")
    r = client.post(S, json=grid_study())
    assert r.status_code == 201, r.text
    study = r.json()
    assert r.headers["location"] == f"{S}/{study['id']}"
    assert study["status"] == "running" and study["progress"]["trials"] == 4
    trials = study["trials"]
    assert [t["overrides"] for t in trials] == [
        {"training.lr": 0.01, "model.neuron_params.ce_mode": "none"},
        {"training.lr": 0.01, "model.neuron_params.ce_mode": "te"},
        {"training.lr": 0.001, "model.neuron_params.ce_mode": "none"},
        {"training.lr": 0.001, "model.neuron_params.ce_mode": "te"},
    ]
    assert [t["status"] for t in trials] == ["queued", "queued", "waiting", "waiting"]
    assert redis_db.llen("celif") == before + 2  # waiting trials have no message
    job = client.get(trials[3]["link"]).json()  # a trial is an ordinary job
    assert job["spec"]["training"]["lr"] == 0.001
    assert job["spec"]["model"]["neuron_params"]["ce_mode"] == "te"

    run_trial(db, trials[0]["job_id"], points=mse_points({10: 0.2, 20: 0.1}))
    assert statuses(client, study["id"]) == ["succeeded", "queued", "queued", "waiting"]
    assert redis_db.llen("celif") == before + 3
    run_trial(db, trials[1]["job_id"], points=mse_points({10: 0.3, 20: 0.05}), final="failed")
    run_trial(db, trials[2]["job_id"], points=mse_points({10: 0.4}))
    run_trial(db, trials[3]["job_id"], points=mse_points({10: 0.5}))
    done = client.get(f"{S}/{study['id']}").json()
    assert done["status"] == "completed" and done["progress"]["fraction"] == 1.0
    assert done["progress"]["by_status"] == {"succeeded": 3, "failed": 1}
    assert done["best_trial"]["index"] == 1 and done["best_trial"]["objective"] == 0.05

    table = client.get(f"{S}/{study['id']}/table").json()
    assert table["fields"] == ["training.lr", "model.neuron_params.ce_mode"]
    row = table["rows"][0]
    assert row["best"] == 0.1 and row["best_step"] == 20 and row["step"] == 20
    assert row["status"] == "succeeded" and row["wall_time_s"] >= 0
    text = client.get(f"{S}/{study['id']}/table.csv")
    assert text.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text.text)))
    assert [r["model.neuron_params.ce_mode"] for r in rows] == ["none", "te", "none", "te"]
    assert rows[1]["best"] == "0.05"
    png = client.get(f"{S}/{study['id']}/curves.png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    svg = client.get(f"{S}/{study['id']}/curves.svg", params={"metric": "val_mse"})
    assert svg.status_code == 200 and b"<svg" in svg.content and b"#00" in svg.content


def test_random_study_is_reproducible_from_its_seed(client, db):
    search = {
        "type": "random",
        "seed": 7,
        "samples": 5,
        "params": {
            "training.lr": {"dist": "loguniform", "low": 1e-4, "high": 1e-2},
            "training.seed": {"dist": "randint", "low": 0, "high": 1000},
            "model.neuron_params.ce_mode": {"dist": "choice", "values": ["none", "te", "spike"]},
        },
    }
    body = {"base": small_spec(), "search": search, "max_concurrent": 5}
    a = client.post(S, json=body).json()["trials"]
    b = client.post(S, json=body).json()["trials"]
    c = client.post(S, json={**body, "search": {**search, "seed": 8}}).json()["trials"]
    overrides = [t["overrides"] for t in a]
    assert overrides == [t["overrides"] for t in b]
    assert overrides != [t["overrides"] for t in c]
    assert all(1e-4 <= o["training.lr"] <= 1e-2 for o in overrides)
    assert len({o["training.lr"] for o in overrides}) == 5


def test_bad_search_space_is_a_422_naming_trial_and_field_and_stores_nothing(client, db):
    unknown = grid_study(search={"type": "grid", "params": {"training.lrr": [0.1]}})
    r = client.post(S, json=unknown)
    assert r.status_code == 422, r.text
    err = r.json()["detail"][0]
    assert err["loc"] == ["body", "trials", 0, "training", "lrr"]
    assert "trial 0" in err["msg"]

    one_bad = grid_study(
        search={"type": "list", "trials": [{"model.hidden": [8]}, {"model.hidden": [8, -1]}]}
    )
    r = client.post(S, json=one_bad)
    assert r.status_code == 422, r.text
    err = r.json()["detail"][0]
    assert err["loc"][:5] == ["body", "trials", 1, "model", "hidden"]
    assert "trial 1 (model.hidden=[8, -1])" in err["msg"]

    too_many = grid_study(search={"type": "grid", "params": {"training.seed": list(range(300))}})
    r = client.post(S, json=too_many)
    assert r.status_code == 422 and "limit of 256" in r.json()["detail"][0]["msg"]

    r = client.post(S, json=grid_study(search={"type": "sweep"}))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "search", "type"]
    r = client.post(S, json=grid_study(max_concurrent=0))
    assert r.status_code == 422
    assert counts(db) == (0, 0)


def test_cancel_and_extend(client, db):
    study = client.post(S, json=grid_study(max_concurrent=1)).json()
    first = study["trials"][0]["job_id"]
    with session_scope(db) as s:
        assert lease.claim(s, first, "w1", 30) is not None
    ext = client.post(
        f"{S}/{study['id']}/extend",
        json={"search": {"type": "list", "trials": [{"training.seed": 5}]}},
    )
    assert ext.status_code == 200, ext.text
    trials = ext.json()["trials"]
    assert [t["index"] for t in trials] == [0, 1, 2, 3, 4]
    assert trials[4]["overrides"] == {"training.seed": 5} and trials[4]["status"] == "waiting"
    bad = client.post(f"{S}/{study['id']}/extend", json={"search": {"type": "list", "trials": [{"training.lr": -1}]}})  # fmt: skip
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][:3] == ["body", "trials", 5]

    r = client.post(f"{S}/{study['id']}/cancel")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "cancelling"  # the running trial stops within a step
    assert [t["status"] for t in body["trials"]] == ["running"] + ["cancelled"] * 4
    with session_scope(db) as s:
        job = s.get(Job, first)
        assert job.cancel_requested and job.stop_reason == "cancel"
        status, _ = stop_outcome(job.stop_reason)
        lease.release(s, first, "w1", status, event={})
    assert client.get(f"{S}/{study['id']}").json()["status"] == "cancelled"
    assert client.post(f"{S}/{study['id']}/cancel").status_code == 409
    assert client.post(f"{S}/{study['id']}/extend", json=ext_body()).status_code == 409


def ext_body():
    return {"search": {"type": "list", "trials": [{"training.seed": 9}]}}


def test_another_user_can_neither_see_nor_touch_a_study(client, bob, db):
    study = client.post(S, json=grid_study()).json()
    for path in ("", "/table", "/table.csv", "/curves.png"):
        assert bob.get(f"{S}/{study['id']}{path}").status_code == 404
    assert bob.post(f"{S}/{study['id']}/cancel").status_code == 404
    assert bob.post(f"{S}/{study['id']}/extend", json=ext_body()).status_code == 404
    assert bob.get(S).json()["items"] == []
    assert [s["id"] for s in client.get(S).json()["items"]] == [study["id"]]
    assert statuses(client, study["id"]) == ["queued", "queued", "waiting", "waiting"]


def test_asha_stops_the_worst_trials_at_a_rung(client, db):
    body = grid_study(
        search={"type": "list", "trials": [{"training.lr": lr} for lr in (0.01, 0.002, 0.001)]},
        max_concurrent=3,
        early_stopping={"rungs": [20, 40], "reduction_factor": 2},
    )
    study = client.post(S, json=body).json()
    assert study["early_stopping"]["metric"] == "val_mse" and study["early_stopping"]["grace"] == 2
    ids = [t["job_id"] for t in study["trials"]]
    # trial 0 alone at the rung: undecided (grace 2)
    run_trial(db, ids[0], points=mse_points({10: 0.3, 20: 0.10}), final="")
    with session_scope(db) as s:
        assert study_repo.apply_early_stopping(s, study["id"]) == []
    run_trial(db, ids[1], points=mse_points({10: 0.3, 20: 0.20, 30: 0.01}), final="")
    run_trial(db, ids[2], points=mse_points({10: 0.3, 20: 0.15}), final="")
    with session_scope(db) as s:  # at rung 20: 0.10 < 0.15 < 0.20; keep floor(3/2) = 1
        assert sorted(study_repo.apply_early_stopping(s, study["id"])) == sorted(ids[1:])
    with session_scope(db) as s:  # decided once
        assert study_repo.apply_early_stopping(s, study["id"]) == []
        for job_id in ids[1:]:
            job = s.get(Job, job_id)
            assert job.cancel_requested and job.stop_reason == "early_stop"
            status, reason = stop_outcome(job.stop_reason)  # what the worker then does
            lease.release(s, job_id, "w1", status, event={"reason": reason})
    trials = client.get(f"{S}/{study['id']}").json()["trials"]
    assert [t["status"] for t in trials] == ["running", "stopped_early", "stopped_early"]
    with session_scope(db) as s:  # the curve is kept
        n = s.scalar(
            select(func.count()).where(JobEvent.job_id == ids[1], JobEvent.kind == "metric")
        )
        assert n == 3
    job = client.get(trials[1]["link"]).json()
    assert job["finished"] and not job["can_cancel"]


def test_waiting_trial_transitions(db, client):
    study = client.post(S, json=grid_study(max_concurrent=1)).json()
    waiting = study["trials"][1]["job_id"]
    with session_scope(db) as s:
        assert transition(s, waiting, "running") is None  # a waiting trial is never claimed
        assert lease.claim(s, waiting, "w1", 30) is None


def test_the_documented_ablation_study_is_six_valid_trials(client, db):
    """docs/studies.md's ablation.json, as written there."""
    import json
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "studies.md").read_text()
    body = json.loads(re.search(r"```json\n(.*?)```", doc, re.S).group(1))
    r = client.post(S, json=body)
    assert r.status_code == 201, r.text
    study = r.json()
    modes = [t["overrides"]["model.neuron_params.ce_mode"] for t in study["trials"]]
    assert modes == ["none", "spike", "membrane", "te", "spike_te", "membrane_te"]
    assert [t["status"] for t in study["trials"]] == ["queued"] * 2 + ["waiting"] * 4
    job = client.get(study["trials"][0]["link"]).json()
    assert job["spec"]["model"]["hidden"] == [64, 152, 152]
    assert job["spec"]["model"]["neuron_params"]["ce_mode"] == "none"


def test_extend_past_the_trial_cap_is_a_422(client, db):
    seeds = {"type": "grid", "params": {"training.seed": list(range(250))}}
    study = client.post(S, json=grid_study(search=seeds)).json()
    assert study["progress"]["trials"] == 250
    more = {"search": {"type": "grid", "params": {"training.seed": list(range(250, 260))}}}
    r = client.post(f"{S}/{study['id']}/extend", json=more)
    assert r.status_code == 422
    assert r.json()["detail"][0]["msg"] == (
        "the study has 250 trials; 10 more would pass the limit of 256"
    )
    assert counts(db) == (1, 250)


def test_epoch_rungs_are_converted_with_each_trials_batch_size(client, db):
    from celif_core.recipes import RECIPES
    from celif_core.spec import validate_spec

    base = {"recipe": "paper/ablation-membrane_te"}
    search = {"type": "list", "trials": [{"training.batch_size": 256}, {"training.batch_size": 128}]}  # fmt: skip
    es = {"rungs": [1, 2.5], "unit": "epochs"}
    study = client.post(S, json={"base": base, "search": search, "early_stopping": es}).json()
    assert study["early_stopping"]["rungs"] == [1, 2.5]
    n = validate_spec(RECIPES["paper/ablation-membrane_te"].spec).train_size
    with session_scope(db) as s:
        jobs = [s.get(Job, t["job_id"]) for t in study["trials"]]
        steps = [study_repo.rung_steps(study["early_stopping"], j) for j in jobs]
    assert steps == [[-(-n // 256), -(-(5 * n) // 512)], [-(-n // 128), -(-(5 * n) // 256)]]
    r = client.post(S, json={"base": base, "search": search, "early_stopping": {"rungs": [1.5]}})
    assert r.status_code == 422  # steps are whole numbers
    r = client.post(S, json={"base": base, "search": search, "early_stopping": {"rungs": [2, 1]}})
    assert r.status_code == 422 and "increasing" in r.text
