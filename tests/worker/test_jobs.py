"""The job pipeline end to end against real PostgreSQL, Redis, the API and a Celery worker."""

from __future__ import annotations

import math
import signal
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from jobstore.db.models import Checkpoint, Job, JobEvent
from tests.worker.conftest import (
    ApiProcess,
    Client,
    Stack,
    WorkerProcess,
    adding_spec,
    wait_for,
)

ADDING_BASELINE_MSE = 0.167


def status_history(stack: Stack, job_id: str) -> list[str]:
    with stack.session() as s:
        rows = s.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "status")
            .order_by(JobEvent.id)
        ).all()  # fmt: skip
        return [r.data["status"] for r in rows]


def job_row(stack: Stack, job_id: str) -> Job:
    with stack.session() as s:
        return s.get(Job, job_id)


def checkpoint_rows(stack: Stack, job_id: str) -> list[Checkpoint]:
    with stack.session() as s:
        return list(
            s.scalars(
                select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)
            ).all()
        )


def series(points: list[dict], split: str, name: str) -> list[dict]:
    return [p for p in points if p["split"] == split and p["name"] == name]


def assert_complete_series(points: list[dict], max_steps: int, eval_every: int) -> None:
    """No duplicate and no missing step in any (split, name) series."""
    keys = Counter((p["split"], p["name"], p["step"]) for p in points)
    dupes = [k for k, n in keys.items() if n > 1]
    assert not dupes, f"duplicate metric points: {dupes[:10]}"
    train_steps = sorted(p["step"] for p in series(points, "train", "loss"))
    assert train_steps, "no train loss points"
    # The trainer may log train loss every step or every k steps: the spacing must be regular.
    gaps = {b - a for a, b in zip(train_steps, train_steps[1:], strict=False)}
    assert len(gaps) <= 1, f"irregular train-loss steps (missing points): gaps {sorted(gaps)}"
    assert train_steps[-1] >= max_steps - max(gaps or {1}) + 1
    val_steps = sorted(p["step"] for p in series(points, "val", "mse"))
    expected = list(range(eval_every, max_steps + 1, eval_every))
    assert all(s in val_steps for s in expected), f"val steps {val_steps}, expected {expected}"


@pytest.fixture(scope="module")
def finished_adding_job(stack: Stack, api: ApiProcess, token: str) -> dict:
    """One small adding job run to completion (shared by the read-only tests below)."""
    live = [w for w in stack.workers if w.alive()]
    if not live:
        stack.workers.append(
            WorkerProcess(stack.env, stack.logs / f"worker-{len(stack.workers)}.log").start()
        )
    client = Client(stack, token)
    job = client.submit(adding_spec())
    done = client.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, timeout=240)
    return done


def test_adding_job_succeeds_with_metrics(client: Client, stack: Stack, finished_adding_job):
    job = finished_adding_job
    assert job["status"] == "succeeded", job.get("error")
    history = status_history(stack, job["id"])
    assert history[-2:] == ["running", "succeeded"], history
    assert "queued" not in history[history.index("running") :]
    assert job["attempts"] == 1
    assert job["progress"]["step"] == 200
    assert job["device"] and job["backend"]

    points = client.metrics(job["id"])
    assert series(points, "train", "loss"), "no train loss points"
    val = series(points, "val", "mse")
    assert val, f"no val mse points in {Counter((p['split'], p['name']) for p in points)}"
    best = min(p["value"] for p in val)
    assert best < ADDING_BASELINE_MSE, f"val mse {best} not below the baseline"
    assert_complete_series(points, 200, 50)
    assert job["latest_metrics"] and job["best_metrics"]

    # Retention: newest `checkpoint_keep_last` (2 here) plus the best, files and rows alike.
    rows = checkpoint_rows(stack, job["id"])
    assert 1 <= len(rows) <= 3
    assert sum(r.is_best for r in rows) == 1
    newest = sorted(r.step for r in rows)[-2:]
    assert newest == [150, 200]
    ckpt_dir = Path(stack.data_dir) / "storage" / "checkpoints" / job["id"]
    on_disk = {p.name for p in ckpt_dir.iterdir() if p.suffix == ".safetensors"}
    assert on_disk == {Path(r.path).name for r in rows}


def test_checkpoint_download_reproduces_eval(client: Client, finished_adding_job, tmp_path: Path):
    import hashlib

    import torch
    from safetensors import safe_open

    from celif_core.checkpoint import load_model
    from celif_core.tasks import build_task
    from celif_core.tasks.base import MetricSums

    job = finished_adding_job
    listing = client.get(f"/jobs/{job['id']}/checkpoints").json()
    best = next(c for c in listing if c["is_best"])
    r = client.get(f"/jobs/{job['id']}/checkpoints/best")
    path = tmp_path / "best.safetensors"
    path.write_bytes(r.content)
    assert (
        hashlib.sha256(r.content).hexdigest() == best["sha256"] == r.headers["X-Checkpoint-SHA256"]
    )

    with safe_open(str(path), framework="pt") as f:  # plain safetensors, no pickle
        assert any(k.startswith("model.") for k in f.keys())
        assert "celif" in f.metadata()

    model, spec, meta = load_model(path)
    assert spec.task.name == "adding" and spec.model.hidden == [16, 16]
    task = build_task(spec)
    sums = MetricSums({}, {})
    with torch.no_grad():
        for x, y in task.eval_batches("val", spec.training.eval_batch_size):
            sums = sums.merged(task.metric_sums(model(x), y))
    recorded = best["metrics"]
    key = "val_mse" if "val_mse" in recorded else "mse"
    assert math.isclose(sums.values()["mse"], recorded[key], rel_tol=1e-4, abs_tol=1e-6), (
        sums.values(),
        recorded,
    )


def test_cancel_running_job_then_worker_takes_next(client: Client, stack: Stack, worker):
    from datetime import datetime

    # Steps of tens of milliseconds, so "within one step" is measurable.
    spec = adding_spec(max_steps=100_000, eval_every=10_000, checkpoint_every=10_000)
    spec["task"]["params"]["seq_len"] = 100
    spec["model"]["hidden"] = [64, 64]
    spec["training"]["batch_size"] = 128
    long = client.submit(spec)
    nxt = client.submit(adding_spec(max_steps=20, eval_every=10, checkpoint_every=10))
    wait_for(lambda: job_row(stack, long["id"]).step >= 20, 120, "the long job to train")
    r = client.post(f"/jobs/{long['id']}/cancel")
    cancelled_at = datetime.now().astimezone()
    assert r.status_code == 200, r.text
    done = client.wait_status(long["id"], {"cancelled", "succeeded", "failed"}, timeout=30)
    assert done["status"] == "cancelled"
    assert 20 <= done["progress"]["step"] < 100_000
    assert status_history(stack, long["id"])[-1] == "cancelled"
    # Seen within one step: the step in flight ends after it (plus slack for one late poll
    # wake-up on a loaded CI machine).
    train = series(client.metrics(long["id"]), "train", "loss")
    late = [p["step"] for p in train if datetime.fromisoformat(p["time"]) > cancelled_at]
    assert len(late) <= 3, f"{len(late)} steps finished after the cancel: {late}"
    assert max(p["step"] for p in train) == done["progress"]["step"]

    after = client.wait_status(nxt["id"], {"succeeded", "failed", "cancelled"}, timeout=120)
    assert after["status"] == "succeeded", after.get("error")


def test_training_error_fails_without_retry(client: Client, stack: Stack, worker):
    job = client.submit(adding_spec(lr=10.0, grad_clip=None, optimizer="sgd", max_steps=400))
    done = client.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, timeout=120)
    assert done["status"] == "failed"
    assert done["error"] and "training loss became" in done["error"]
    assert done["attempts"] == 1
    history = status_history(stack, job["id"])
    assert history.count("running") == 1 and history[-1] == "failed"


def test_worker_killed_mid_job_resumes_from_checkpoint(
    client: Client, stack: Stack, api: ApiProcess, worker: WorkerProcess
):
    max_steps, every = 1200, 100
    job = client.submit(adding_spec(max_steps=max_steps, eval_every=every, checkpoint_every=every))
    jid = job["id"]

    def has_checkpoint():
        rows = checkpoint_rows(stack, jid)
        return rows and job_row(stack, jid).status == "running" and rows[-1].step

    ckpt_step = wait_for(has_checkpoint, 120, "a first checkpoint")
    row = job_row(stack, jid)
    assert row.status == "running" and row.step < max_steps
    worker.kill()  # kill -9 of the whole worker (main process and pool child)

    # A new worker; its reaper re-queues the stale job, which resumes from its checkpoint.
    fresh = WorkerProcess(stack.env, stack.logs / f"worker-{len(stack.workers)}.log").start()
    stack.workers.append(fresh)
    wait_for(lambda: job_row(stack, jid).attempts == 2, 60, "the job to be claimed again")

    # Restart the API process mid-job: nothing is lost (state lives in the database).
    api.stop()
    api.start()
    done = client.wait_status(jid, {"succeeded", "failed", "cancelled"}, timeout=300)
    assert done["status"] == "succeeded", done.get("error")
    assert done["attempts"] == 2
    assert done["progress"]["step"] == max_steps

    history = status_history(stack, jid)
    assert history[-4:] == ["running", "queued", "running", "succeeded"], history
    with stack.session() as s:
        resumed = s.scalars(
            select(JobEvent).where(JobEvent.job_id == jid, JobEvent.kind == "status")
            .order_by(JobEvent.id.desc()).limit(2)
        ).all()  # fmt: skip
    resumed_from = resumed[1].data.get("resumed_from_step")
    assert resumed_from is not None and resumed_from >= ckpt_step, resumed[1].data
    assert_complete_series(client.metrics(jid), max_steps, every)


def test_warm_shutdown_hands_the_job_back(
    client: Client, stack: Stack, api: ApiProcess, worker: WorkerProcess
):
    """SIGTERM to a worker (docker compose stop): its job checkpoints at the current step and is
    re-queued uncounted; the next worker resumes it from exactly there."""
    max_steps = 1500
    job = client.submit(adding_spec(max_steps=max_steps, eval_every=250, checkpoint_every=1000))
    jid = job["id"]
    wait_for(lambda: job_row(stack, jid).step >= 50, 120, "the job to train")
    worker.proc.send_signal(signal.SIGTERM)  # the main process only, as docker does
    worker.proc.wait(60)
    row = job_row(stack, jid)
    assert row.status == "queued", row.status
    assert row.attempts == 0
    stopped_at = max(c.step for c in checkpoint_rows(stack, jid))
    assert 50 <= stopped_at < max_steps

    fresh = WorkerProcess(stack.env, stack.logs / f"worker-{len(stack.workers)}.log").start()
    stack.workers.append(fresh)
    done = client.wait_status(jid, {"succeeded", "failed", "cancelled"}, timeout=300)
    assert done["status"] == "succeeded", done.get("error")
    assert done["attempts"] == 1
    with stack.session() as s:
        last_run = s.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == jid, JobEvent.kind == "status")
            .order_by(JobEvent.id.desc())
            .limit(2)
        ).all()[1]
    assert last_run.data["status"] == "running"
    assert last_run.data["resumed_from_step"] == stopped_at
    assert_complete_series(client.metrics(jid), max_steps, 250)
