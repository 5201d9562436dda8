"""A 25 s storage outage does not fail a job. Real worker, PostgreSQL, Redis and files: the
job's checkpoint folder is replaced by a regular file for 25 s (root ignores permission bits,
so a path component that is not a directory is the outage: every open under it fails with
NotADirectoryError, an OSError like EIO or a lost mount), then put back. The job retries with
backoff, counted as `storage`, and resumes from its checkpoint once the storage is back."""

from __future__ import annotations

import time

from sqlalchemy import select

from jobstore.db.models import JobEvent
from tests.helpers import wait_for
from tests.worker.conftest import Client, WorkerProcess, adding_spec

OUTAGE_S = 25.0


def test_a_25_s_storage_outage_does_not_fail_the_job(stack, api, token):
    client = Client(stack, token)
    env = {
        **stack.env,
        "CELIF_INFRA_RETRY_BASE_S": "1",
        "CELIF_INFRA_RETRY_MAX_DELAY_S": "8",
        "CELIF_INFRA_RETRY_BUDGET_S": "180",
        "CELIF_RESEND_QUEUED_AFTER_S": "2",
    }
    worker = WorkerProcess(env, stack.logs / "worker-storage-outage.log").start()
    try:
        spec = adding_spec(max_steps=600, eval_every=20, checkpoint_every=20)
        job = client.submit(spec)["id"]
        wait_for(lambda: client.get(f"/jobs/{job}/checkpoints").json(), 120, "a checkpoint")
        folder = stack.data_dir / "storage" / "checkpoints" / job
        away = folder.with_name(job + ".away")
        folder.rename(away)
        folder.write_text("storage unavailable")  # the outage begins
        try:
            wait_for(lambda: _retries(stack, job), 60, "a retry after the storage error")
            time.sleep(OUTAGE_S)
        finally:
            folder.unlink()
            away.rename(folder)  # the storage is back
        done = client.wait_status(job, {"succeeded", "failed", "cancelled"}, timeout=300)
        assert done["status"] == "succeeded", done.get("error")
        assert done["progress"]["step"] == 600
        retries = _retries(stack, job)
        assert retries and all(r["cause"] == "storage" for r in retries), retries
        print(f"{len(retries)} backoff retries, delays {[r['backoff_s'] for r in retries]}")
        with stack.session() as s:
            runs = [
                e.data
                for e in s.scalars(
                    select(JobEvent)
                    .where(JobEvent.job_id == job, JobEvent.kind == "status")
                    .order_by(JobEvent.id)
                )
                if e.data.get("status") == "running"
            ]
        assert (runs[-1].get("resumed_from_step") or 0) >= 20, runs  # from its checkpoint
    finally:
        worker.kill()


def _retries(stack, job_id: str) -> list[dict]:
    with stack.session() as s:
        return [
            e.data
            for e in s.scalars(
                select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "status")
            )
            if e.data.get("reason") == "infrastructure error, retrying"
        ]
