"""Studies end to end: real API process, real `celif worker` processes, PostgreSQL and Redis.
Tiny trials (adding, seq_len 10): the point is the study's scheduling, not the learning."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select

from jobstore.db.models import TERMINAL_STATES, JobEvent
from tests.worker.conftest import ApiProcess, Client, Stack, WorkerProcess, wait_for

BASE: dict[str, Any] = {
    "task": {"name": "adding", "params": {"seq_len": 10, "val_size": 128, "test_size": 128}},
    "model": {"neuron": "celif", "hidden": [8]},
    "training": {
        "max_steps": 40,
        "batch_size": 32,
        "eval_batch_size": 128,
        "lr": 0.01,
        "eval_every": 20,
        "checkpoint_every": 20,
        "device": "cpu",
    },
}


def submit_study(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{client.base}/studies", json=body, headers=client.headers, timeout=60)
    assert r.status_code == 201, r.text
    return r.json()


def wait_study(client: Client, study_id: str, timeout: float) -> dict[str, Any]:
    def done():
        s = client.get(f"/studies/{study_id}").json()
        return s if s["status"] not in ("running", "cancelling") else None

    return wait_for(done, timeout, f"study {study_id} to finish", 0.5)


def max_active(stack: Stack, job_ids: list[str]) -> int:
    """The most trials queued or running at once, from their status events."""
    with stack.session() as s:
        rows = s.execute(
            select(JobEvent.id, JobEvent.job_id, JobEvent.data)
            .where(JobEvent.job_id.in_(job_ids), JobEvent.kind == "status")
            .order_by(JobEvent.id)
        ).all()
    state: dict[str, str] = {}
    most = 0
    for _id, job_id, data in rows:
        state[job_id] = data["status"]
        most = max(most, sum(v in ("queued", "running") for v in state.values()))
    return most


def test_grid_study_runs_to_the_end_two_at_a_time(
    client: Client, stack: Stack, api: ApiProcess, worker: WorkerProcess
):
    study = submit_study(
        client,
        {
            "base": BASE,
            "search": {"type": "grid", "params": {"training.lr": [0.01, 0.003],
                                                  "model.neuron_params.ce_mode": ["none", "te"]}},
            "objective": {"metric": "val_mse"},
            "max_concurrent": 2,
        },
    )  # fmt: skip
    done = wait_study(client, study["id"], 300)
    assert done["status"] == "completed", done
    assert done["progress"]["by_status"] == {"succeeded": 4}
    ids = [t["job_id"] for t in done["trials"]]
    assert max_active(stack, ids) == 2
    assert done["best_trial"] is not None
    table = client.get(f"/studies/{study['id']}/table").json()
    for row in table["rows"]:
        assert row["step"] == 40 and row["best"] is not None and row["wall_time_s"] > 0
        assert row["energy_nj"] is not None and row["firing_rates"]
        assert 0 <= row["mean_firing_rate"] <= 1


def test_asha_stops_the_worst_trials(
    client: Client, stack: Stack, api: ApiProcess, worker: WorkerProcess
):
    """Same seed, so the same initial network: lr 1e-7 stays where it starts, lr 0.01 learns.
    The slow trials would run 20000 steps: only early stopping ends them in time."""
    trials = [
        {"training.lr": 0.01, "training.max_steps": 60},
        {"training.lr": 1e-7, "training.max_steps": 20000},
        {"training.lr": 1e-7, "training.max_steps": 20000, "model.neuron_params.rho": 0.98},
    ]
    study = submit_study(
        client,
        {
            "base": BASE,
            "search": {"type": "list", "trials": trials},
            "objective": {"metric": "val_mse"},
            "max_concurrent": 1,
            "early_stopping": {"rungs": [40], "reduction_factor": 2},
        },
    )
    done = wait_study(client, study["id"], 300)
    statuses = [t["status"] for t in done["trials"]]
    assert statuses == ["succeeded", "stopped_early", "stopped_early"], done
    for t in done["trials"][1:]:
        assert 40 <= t["step"] < 20000
        job = client.job(t["job_id"])
        assert job["status"] == "stopped_early" and job["finished"]
        assert client.get(f"/jobs/{t['job_id']}/checkpoints").json()  # checkpoints kept
        assert client.metrics(t["job_id"])  # and the curve


def test_worker_killed_mid_trial_resumes_and_the_study_completes(
    client: Client, stack: Stack, api: ApiProcess, worker: WorkerProcess
):
    study = submit_study(
        client,
        {
            "base": BASE,
            "search": {"type": "list", "trials": [
                {"training.max_steps": 1500, "training.checkpoint_every": 50},
                {"training.seed": 1},
            ]},
            "max_concurrent": 1,
        },
    )  # fmt: skip
    first = study["trials"][0]["job_id"]

    def checkpointed():
        job = client.job(first)
        return job["status"] == "running" and client.get(f"/jobs/{first}/checkpoints").json()

    wait_for(checkpointed, 120, "the first trial to checkpoint", 0.2)
    assert client.get(f"/studies/{study['id']}").json()["trials"][1]["status"] == "waiting"
    worker.kill()
    fresh = WorkerProcess(stack.env, stack.logs / f"worker-{len(stack.workers)}.log").start()
    stack.workers.append(fresh)
    done = wait_study(client, study["id"], 300)
    assert done["status"] == "completed", done
    job = client.job(first)
    assert job["attempts"] == 2 and job["progress"]["step"] == 1500
    assert all(t["status"] in TERMINAL_STATES for t in done["trials"])
