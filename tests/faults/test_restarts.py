"""PostgreSQL and Redis restarted while a job trains (private instances: tests/services.py).

Real API and `celif worker`; the job must succeed with one complete metric series (no point
lost, none stored twice) and a sane status history. `pytest -m faults -s` prints the figures.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from jobstore.db.models import Checkpoint, Job, JobEvent
from tests.faults.conftest import Cluster, lost_and_duplicated
from tests.helpers import wait_for
from tests.worker.conftest import adding_spec
from tests.worker.test_jobs import assert_complete_series

pytestmark = pytest.mark.faults

MAX_STEPS, EVERY = 800, 50
STALE_AFTER_S = 15
TERMINAL = {"succeeded", "failed", "cancelled"}


def job_spec(max_steps: int = MAX_STEPS) -> dict:
    spec = adding_spec(max_steps=max_steps, eval_every=EVERY, checkpoint_every=EVERY)
    spec["task"]["params"]["seq_len"] = 60
    spec["model"]["hidden"] = [48, 48]
    return spec


def status_events(c: Cluster, job_id: str) -> list[dict]:
    with c.stack.session() as s:
        return [
            e.data
            for e in s.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.kind == "status")
                .order_by(JobEvent.id)
            )
        ]


def training(c: Cluster, job_id: str, past_step: int):
    def check():
        with c.stack.session() as s:
            job = s.get(Job, job_id)
            ckpt = s.scalars(select(Checkpoint.id).where(Checkpoint.job_id == job_id)).first()
            return job if job.status == "running" and ckpt and job.step >= past_step else None

    return wait_for(check, 180, f"job {job_id} training past step {past_step}")


def assert_sane(c: Cluster, job_id: str, done: dict, max_steps: int = MAX_STEPS) -> dict:
    """Success, a complete series, and a history in which every hand-back says why."""
    assert done["status"] == "succeeded", done.get("error")
    assert done["progress"]["step"] == max_steps
    points = c.client.metrics(job_id)
    assert_complete_series(points, max_steps, EVERY)
    lost, duplicated = lost_and_duplicated(points, max_steps)
    assert (lost, duplicated) == (0, 0)
    events = status_events(c, job_id)
    history = [e["status"] for e in events]
    assert history[0] == "queued" and history[-1] == "succeeded", history
    requeues = [e for e in events[1:] if e["status"] == "queued"]
    assert all(e.get("reason") for e in requeues), requeues
    assert history.count("running") == len(requeues) + 1, history
    return {"lost": lost, "duplicated": duplicated, "requeues": requeues, "history": history}


@pytest.mark.parametrize("down_s", [0, 5], ids=["restart", "down-5s"])
def test_postgres_restarted_mid_job(cluster: Cluster, down_s: float):
    """`pg_ctl restart -m fast` terminates every connection; the worker's next writes fail
    until the server is back. The metric batch of a failed flush is put back and written by
    the next one; the heartbeat thread reopens its connection (pool_pre_ping)."""
    c = cluster
    c.start_services()
    client = c.start_api()
    # Leases of 15 s (production: 30): the outage is shorter, as a restart or a fail-over is.
    c.worker(None, "pg", CELIF_STALE_AFTER_S=str(STALE_AFTER_S)).start()
    jid = client.submit(job_spec())["id"]
    at = training(c, jid, 300).step

    started = time.monotonic()
    if down_s:
        c.pg.down_for(down_s)
    else:
        c.pg.restart()
    outage_s = time.monotonic() - started
    how = f"stopped for {down_s} s" if down_s else "restarted (pg_ctl restart -m fast)"

    done = client.wait_status(jid, TERMINAL, timeout=300)
    out = assert_sane(c, jid, done)
    assert outage_s < STALE_AFTER_S
    # The outage is shorter than stale_after_s: the lease survives, no worker loss is counted.
    # A write that failed at a checkpoint is an infrastructure error: once the database answers
    # the job is re-queued with its claim given back (attempts unchanged) and resumes from the
    # checkpoint before it (worker/failures.py).
    assert done["attempts"] == 1, out["history"]
    assert all(e["reason"] == "infrastructure error, retrying" for e in out["requeues"])
    print(
        f"\nPostgreSQL {how} at step {at}: unreachable {outage_s:.1f} s; "
        f"infrastructure re-queues {len(out['requeues'])}, attempts {done['attempts']}, "
        f"metric points lost {out['lost']}, duplicated {out['duplicated']}; history {out['history']}"
    )


@pytest.mark.parametrize("appendonly", [True, False], ids=["appendonly", "no-persistence"])
def test_redis_restarted_mid_job(cluster: Cluster, appendonly: bool):
    """Redis dies (SIGKILL) while a job trains and comes back on the same port; a second job is
    submitted while it is down. The training job needs no broker until it finishes; the worker
    reconnects; the job whose message never reached the broker is re-sent by the reaper
    (`resend_queued_after_s`). Each job runs once."""
    c = cluster
    c.start_services(appendonly=appendonly)
    client = c.start_api()
    worker = c.worker(None, "redis").start()
    first = client.submit(job_spec())["id"]
    at = training(c, first, 300).step

    c.redis.stop()  # a crash: with appendonly the AOF has every write Redis acknowledged
    second = client.submit(job_spec(max_steps=200))["id"]  # accepted while the broker is down
    time.sleep(2)  # down for a few seconds
    c.redis.start()

    done = client.wait_status(first, TERMINAL, timeout=300)
    out = assert_sane(c, first, done)
    assert done["attempts"] == 1 and not out["requeues"], out["history"]
    later = client.wait_status(second, TERMINAL, timeout=300)
    out2 = assert_sane(c, second, later, max_steps=200)
    assert later["attempts"] == 1 and out2["history"] == ["queued", "running", "succeeded"]
    log = worker.log_path.read_text(errors="replace")
    resent = "re-sent 1 queued job(s)" in log
    assert resent, "the job submitted while Redis was down was not re-sent by the reaper"
    print(
        f"\nRedis ({'appendonly yes' if appendonly else 'no persistence'}) killed at step {at} "
        f"and restarted: training job attempts {done['attempts']}, history {out['history']}, "
        f"points lost {out['lost']}, duplicated {out['duplicated']}; job submitted while it was "
        f"down: re-sent by the reaper, ran once (history {out2['history']})"
    )
