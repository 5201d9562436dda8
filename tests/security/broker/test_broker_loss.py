"""Lost broker messages: every queued job still runs, exactly once.

Real Redis, PostgreSQL, API and `celif worker` processes. (1) The Redis keys of the queue are
deleted while 3 jobs wait: the reaper re-sends them. (2) A private `redis-server` without
persistence is restarted (the machine's shared Redis is never touched) while 3 jobs wait and a
4th is submitted while it is down. Each job must succeed with attempts == 1 and one `running`
event: a re-send never runs a job twice.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
import redis

from jobstore.queue import QUEUES
from tests.services import PrivateRedis
from tests.worker.conftest import REDIS_HOST, ApiProcess, Client, WorkerProcess, adding_spec

REAPER_INTERVAL_S = 1.0  # the stack's CELIF_REAPER_INTERVAL_S
RESEND_AFTER_S = 2 * REAPER_INTERVAL_S
SPEC = adding_spec(max_steps=30, eval_every=15, checkpoint_every=15)
CPU_QUEUE = QUEUES["cpu"]


def _runs(client: Client, job_id: str) -> int:
    r = httpx.get(
        f"{client.base}/jobs/{job_id}/events",
        headers=client.headers,
        timeout=30,
    )
    assert r.status_code == 200
    return r.text.count('"status": "running"')


def _all_run_once(client: Client, ids: list[str], timeout: float) -> list[float]:
    """Wait for every job to succeed; assert each ran once. Returns the seconds each took."""
    start = time.monotonic()
    took = []
    for job_id in ids:
        job = client.wait_status(job_id, {"succeeded", "failed", "cancelled"}, timeout=timeout)
        took.append(round(time.monotonic() - start, 1))
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 1, job
        assert _runs(client, job_id) == 1
    return took


def _worker(env: dict, log: Path) -> WorkerProcess:
    return WorkerProcess({**env, "CELIF_RESEND_QUEUED_AFTER_S": str(RESEND_AFTER_S)}, log).start()


def test_deleted_queue_keys_jobs_still_run_once(stack, api, token):
    client = Client(stack, token)
    r = redis.Redis.from_url(stack.env["CELIF_BROKER_URL"])
    ids = [client.submit(SPEC)["id"] for _ in range(3)]
    assert r.llen(CPU_QUEUE) == 3  # SPEC trains on cpu: its queue
    lost = [k for k in r.keys() if k != b"celif-test-lock"]
    assert CPU_QUEUE.encode() in lost
    r.delete(*lost)  # every key of the broker: the queue list and kombu's bookkeeping
    worker = _worker(stack.env, stack.logs / "worker-keys-deleted.log")
    try:
        # One worker runs them one after the other: each within the re-send bound plus the
        # runs before it (the bound is generous: the machine is shared; times are printed).
        took = _all_run_once(client, ids, timeout=2 * REAPER_INTERVAL_S + RESEND_AFTER_S + 120)
        print("seconds from worker ready to each job's success:", took)
        log = worker.log_path.read_text()
        assert "re-sent 3 queued job(s)" in log
        assert log.count("reaper: re-sent") == 1, log  # no needless duplicate later
        # The broker is healthy and empty: /metrics says 0, not -1.
        text = httpx.get(f"{api.url}/metrics", timeout=10).text
        assert "celif_queue_depth 0.0" in text, [
            line for line in text.splitlines() if "queue_depth" in line
        ]
    finally:
        worker.kill()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_redis_restart_jobs_still_run_once(stack, token, tmp_path):
    private = PrivateRedis(tmp_path, appendonly=False).start()
    env = {**stack.env, "CELIF_BROKER_URL": f"redis://{REDIS_HOST}:{private.port}/0"}
    api = ApiProcess(env, stack.logs / "api-private-redis.log").start()
    client = Client(stack, token)
    client.stack = type("S", (), {"api": api})()  # the client talks to this API
    worker = None
    try:
        ids = [client.submit(SPEC)["id"] for _ in range(3)]
        assert redis.Redis(port=private.port).llen(CPU_QUEUE) == 3
        private.stop()  # Redis dies and its messages with it
        ids.append(client.submit(SPEC)["id"])  # accepted while the broker is down
        private.start()  # same port, empty
        worker = _worker(env, stack.logs / "worker-private-redis.log")
        took = _all_run_once(client, ids, timeout=2 * REAPER_INTERVAL_S + RESEND_AFTER_S + 150)
        print("seconds from worker ready to each job's success:", took)
    finally:
        if worker is not None:
            worker.kill()
        api.stop()
        private.stop()


def test_message_taken_by_a_dead_worker_is_resent(stack, api, token):
    """A message delivered to a worker that died before claiming the job sits in Redis's
    `unacked` hash until the 12 h visibility timeout: once older than `claim_within_s` it no
    longer counts as held, and the reaper re-sends the job (a fresh delivery still counts)."""
    from jobstore.settings import Settings
    from worker.reaper import reap_once

    client = Client(stack, token)
    r = redis.Redis.from_url(stack.env["CELIF_BROKER_URL"])
    job = client.submit(SPEC)["id"]
    message = r.rpop(CPU_QUEUE)  # what a worker's BRPOP takes ...
    from jobstore.queue import _job_id_of

    assert message is not None and _job_id_of(message) == job
    settings = Settings(
        _env_file=None,
        database_url=stack.env["CELIF_DATABASE_URL"],
        broker_url=stack.env["CELIF_BROKER_URL"],
        data_dir=stack.data_dir,
        resend_queued_after_s=RESEND_AFTER_S,
        claim_within_s=2 * RESEND_AFTER_S,
    )
    for age, resent in ((0.0, False), (10 * RESEND_AFTER_S, True)):
        time.sleep(RESEND_AFTER_S + 0.5)  # the job has been queued past the bound
        # ... and kombu's delivery bookkeeping, as the worker writes it on delivery.
        r.hset("unacked", "tag-1", json.dumps([json.loads(message), CPU_QUEUE, CPU_QUEUE]))
        r.zadd("unacked_index", {"tag-1": time.time() - age})
        sent: list[str] = []
        reap_once(settings, enqueue=sent.append)
        assert (sent == [job]) is resent, (age, sent)
    r.delete("unacked", "unacked_index")
    with stack.session() as s:
        from jobstore.db.models import Job

        s.get(Job, job).status = "cancelled"  # leave nothing queued for the other tests
