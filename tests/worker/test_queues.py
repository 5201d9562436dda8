"""Device queues with real processes: jobs go to the queue of their `training.device` (cuda ->
celif.gpu, cpu -> celif.cpu, auto -> celif), workers take only the queues they consume, every
re-send keeps the job's queue, and a job whose queue has no worker says so. Also the worker
registry behind that message and `celif worker --ping`, and the `--queues` CLI errors.

The machine has no GPU, so "only CPU workers" is what it has; the tests kill the stack's workers
first so that each one starts exactly the workers it names."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import httpx
import pytest
import redis
from sqlalchemy import select

from jobstore import workers
from jobstore.db.models import Job, JobEvent
from jobstore.queue import QUEUES, _job_id_of
from tests.helpers import wait_for
from tests.worker.conftest import REPO, Client, Stack, WorkerProcess, adding_spec


def only_workers(stack: Stack, *queues: str | None) -> list[WorkerProcess]:
    """Kill every live worker of the stack, then start one per entry (its `--queues`)."""
    for w in stack.workers:
        w.kill()
    wait_for(lambda: not online_workers(stack), 30, "the killed workers to go offline")
    started = []
    for q in queues:
        log = stack.logs / f"worker-{len(stack.workers)}.log"
        w = WorkerProcess(stack.env, log, queues=q).start()
        stack.workers.append(w)
        started.append(w)
    return started


def online_workers(stack: Stack) -> list[str]:
    with stack.session() as s:
        census = workers.census(s, float(stack.env["CELIF_WORKER_OFFLINE_AFTER_S"]))
    return [w.id for w in census.workers if w.online]


def broker(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.env["CELIF_BROKER_URL"])


def queued_ids(stack: Stack, kind: str) -> list[str]:
    """Job ids of the messages waiting in the broker queue of this kind."""
    raw = broker(stack).lrange(QUEUES[kind], 0, -1)
    return [i for i in map(_job_id_of, raw) if i is not None]


def job_row(stack: Stack, job_id: str) -> Job:
    with stack.session() as s:
        return s.get(Job, job_id)


def celif(stack: Stack, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "celif_cli.main", *args],
        env=env or stack.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


SHORT = {"max_steps": 60, "eval_every": 30, "checkpoint_every": 30}


# ----------------------------------------------------------------------------- routing
def test_cpu_and_auto_jobs_go_to_their_queues_and_a_cuda_job_waits_for_a_gpu_worker(
    client: Client, stack: Stack
):
    only_workers(stack)  # none: the messages stay where they were sent
    cuda = client.submit(adding_spec(device="cuda", **SHORT))
    cpu = client.submit(adding_spec(device="cpu", **SHORT))
    auto = client.submit(adding_spec(device="auto", **SHORT))
    assert (cuda["queue"], cpu["queue"], auto["queue"]) == ("gpu", "cpu", "any")
    gpu_q, cpu_q, any_q = (queued_ids(stack, k) for k in ("gpu", "cpu", "any"))
    assert cuda["id"] in gpu_q and cuda["id"] not in cpu_q + any_q
    assert cpu["id"] in cpu_q and cpu["id"] not in gpu_q + any_q
    assert auto["id"] in any_q and auto["id"] not in gpu_q + cpu_q
    assert cpu["waiting_for"] == "a CPU worker: none is online (none has been seen yet)" or (
        cpu["waiting_for"].startswith("a CPU worker: none is online (last seen")
    )
    assert cpu["queue_has_worker"] is False

    # A CPU-only worker (cpu + any, the default on a host without CUDA) trains both of those;
    # the cuda job, sent before them, is still queued when they are done, and says why.
    (w,) = only_workers(stack, None)
    for job in (cpu, auto):
        done = client.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, timeout=240)
        assert done["status"] == "succeeded", done.get("error")
        assert done["device"] == "cpu"
        assert done["waiting_for"] is None and done["queue_has_worker"] is None
    waiting = client.job(cuda["id"])
    assert waiting["status"] == "queued"
    assert waiting["queue_has_worker"] is False
    assert waiting["waiting_for"].startswith("a GPU worker: none is online"), waiting
    assert cuda["id"] in queued_ids(stack, "gpu")  # nobody took it
    listed = {j["id"]: j for j in client.get("/jobs", status="queued").json()["items"]}
    assert listed[cuda["id"]]["waiting_for"] == waiting["waiting_for"]

    listing = client.get("/workers").json()
    mine = [x for x in listing["items"] if x["online"]]
    assert [(x["queues"], x["devices"]) for x in mine] == [(["any", "cpu"], ["cpu"])]
    assert listing["queues"]["gpu"]["online"] == 0
    assert listing["queues"]["cpu"] == {"online": 1, "waiting_for": "a CPU worker (1 online)"}
    assert set(mine[0]) == {
        "id", "host", "queues", "devices", "running", "online", "started_at", "last_seen"
    }  # fmt: skip

    r = client.post(f"/jobs/{cuda['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert r.json()["waiting_for"] is None


def test_a_cpu_only_queue_worker_leaves_auto_jobs_to_the_any_queue(client: Client, stack: Stack):
    only_workers(stack, "cpu")
    auto = client.submit(adding_spec(device="auto", **SHORT))
    cpu = client.submit(adding_spec(device="cpu", **SHORT))
    done = client.wait_status(cpu["id"], {"succeeded", "failed", "cancelled"}, timeout=240)
    assert done["status"] == "succeeded", done.get("error")
    waiting = client.job(auto["id"])
    assert waiting["status"] == "queued"
    assert waiting["waiting_for"].startswith("a worker: none is online"), waiting
    only_workers(stack, "any")
    done = client.wait_status(auto["id"], {"succeeded", "failed", "cancelled"}, timeout=240)
    assert done["status"] == "succeeded", done.get("error")


def test_the_reapers_resend_keeps_the_jobs_queue(client: Client, stack: Stack):
    """A lost message (the Redis key deleted) is re-sent by the reaper to the job's own queue:
    here `celif.cpu`, while the only live worker (whose reaper re-sends) consumes `any` only."""
    env = {**stack.env, "CELIF_RESEND_QUEUED_AFTER_S": "1"}
    for w in stack.workers:
        w.kill()
    reaper = WorkerProcess(env, stack.logs / f"worker-{len(stack.workers)}.log", queues="any")
    stack.workers.append(reaper.start())
    job = client.submit(adding_spec(device="cpu", **SHORT))
    assert job["id"] in queued_ids(stack, "cpu")
    broker(stack).delete(QUEUES["cpu"])  # the message is lost
    wait_for(lambda: job["id"] in queued_ids(stack, "cpu"), 60, "the re-send to celif.cpu")
    assert job["id"] not in queued_ids(stack, "any")
    only_workers(stack, "cpu")
    done = client.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, timeout=240)
    assert done["status"] == "succeeded", done.get("error")


def test_a_warm_shutdown_requeues_the_job_on_its_queue(client: Client, stack: Stack):
    (w,) = only_workers(stack, "cpu")
    job = client.submit(adding_spec(device="cpu", max_steps=1500, checkpoint_every=1000))
    wait_for(lambda: job_row(stack, job["id"]).step >= 30, 120, "the job to train")
    w.proc.send_signal(signal.SIGTERM)  # the main process only, as docker does
    w.proc.wait(60)
    assert job_row(stack, job["id"]).status == "queued"
    assert job["id"] in queued_ids(stack, "cpu")
    assert job["id"] not in queued_ids(stack, "any")
    # The clean stop is in the registry at once: no CPU worker online.
    assert client.job(job["id"])["queue_has_worker"] is False
    rc = celif(stack, "worker", "--ping")
    assert rc.returncode == 1 and "offline" in rc.stderr, rc.stderr

    only_workers(stack, "cpu")
    done = client.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
    assert done["status"] == "succeeded", done.get("error")
    with stack.session() as s:
        reasons = [
            (e.data or {}).get("reason")
            for e in s.scalars(
                select(JobEvent).where(JobEvent.job_id == job["id"], JobEvent.kind == "status")
            )
        ]
    assert "worker shut down" in reasons


# ----------------------------------------------------------------------------- the CLI
def test_unknown_queue_names_are_a_clear_cli_error(stack: Stack):
    run = celif(stack, "worker", "--queues", "gpu,bogus")
    assert run.returncode == 2
    assert "argument --queues: unknown queue 'bogus'" in run.stderr, run.stderr
    assert "gpu, cpu, any, or all" in run.stderr


def test_a_gpu_queue_needs_a_cuda_device(stack: Stack):
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    if subprocess.run([sys.executable, "-c", probe]).returncode == 0:
        pytest.skip("this host has a CUDA device")
    run = celif(stack, "worker", "--queues", "gpu")
    assert run.returncode == 2
    assert "--queues gpu needs a CUDA device" in run.stderr, run.stderr


def test_ping_answers_for_a_live_worker_and_fails_without_one(stack: Stack):
    (w,) = only_workers(stack, "cpu,any")

    def ping_ok():
        run = celif(stack, "worker", "--ping")
        return run if run.returncode == 0 else None

    ok = wait_for(ping_ok, 30, "celif worker --ping to answer")
    assert ok.stdout.startswith("ok: worker celif-"), ok.stdout
    node = ok.stdout.split()[2]
    assert celif(stack, "worker", "--ping", "--worker-id", node).returncode == 0
    other = celif(stack, "worker", "--ping", "--worker-id", "celif-1@nowhere")
    assert other.returncode == 1 and "never announced" in other.stderr

    w.kill()  # kill -9: no goodbye; the row goes stale after worker_offline_after_s (3 s here)
    gone = wait_for(
        lambda: (r := celif(stack, "worker", "--ping")).returncode != 0 and r,
        30,
        "--ping to fail after the worker was killed",
    )
    assert gone.returncode == 1 and "offline" in gone.stderr, gone.stderr
    bad_db = {**stack.env, "CELIF_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/x"}
    down = celif(stack, "worker", "--ping", env=bad_db)
    assert down.returncode == 1 and "cannot read the worker registry" in down.stderr


def test_workers_route_needs_a_token(client: Client):
    r = httpx.get(f"{client.base}/workers", timeout=30)
    assert r.status_code == 401
    assert json.loads(r.text)["detail"]
