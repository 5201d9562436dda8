"""Jobs whose artifacts live in an S3-compatible object store (a real S3 API server: moto's
standalone server on loopback, `s3_server`), with the real API and real workers.

The API and each worker have data directories of their own: nothing is shared but PostgreSQL,
Redis and the store, as on separate hosts. Each worker started after another gets a fresh
data directory, so whatever it resumes from was read back from the store (its cache is empty).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from jobstore.db.models import JobEvent
from tests.helpers import S3_CREDENTIALS, S3Server, wait_for
from tests.worker.conftest import (
    ApiProcess,
    Client,
    Stack,
    WorkerProcess,
    adding_spec,
)
from tests.worker.test_jobs import assert_complete_series, checkpoint_rows, job_row

DONE = {"succeeded", "failed", "cancelled"}


@dataclass
class S3Deployment:
    stack: Stack
    server: S3Server
    env: dict[str, str]  # without CELIF_DATA_DIR: each process gets its own
    root: Path
    api: ApiProcess | None = None
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return self.env["CELIF_S3_PREFIX"]

    def process_env(self, name: str, **extra: str) -> dict[str, str]:
        data = self.root / name
        data.mkdir(parents=True, exist_ok=True)
        return {**self.env, "CELIF_DATA_DIR": str(data), **extra}

    def start_api(self, name: str = "api", **extra: str) -> ApiProcess:
        return ApiProcess(self.process_env(name, **extra), self.root / f"{name}.log").start()

    def start_worker(self) -> WorkerProcess:
        name = f"worker-{len(self.workers)}"
        w = WorkerProcess(self.process_env(name), self.root / f"{name}.log").start()
        self.workers.append(w)
        return w

    def worker(self) -> WorkerProcess:
        live = [w for w in self.workers if w.alive()]
        return live[0] if live else self.start_worker()

    def objects(self, job_id: str) -> set[str]:
        """The job's checkpoint keys in the bucket (without the prefix)."""
        keys = self.server.keys(f"{self.prefix}/checkpoints/{job_id}/")
        return {k.removeprefix(f"{self.prefix}/") for k in keys}


@pytest.fixture(scope="module")
def s3(stack: Stack, s3_server: S3Server, tmp_path_factory) -> Iterator[S3Deployment]:
    # Workers of other test modules (local storage, the same broker) would take our jobs.
    for w in stack.workers:
        w.kill()
    env = {
        **stack.env,
        **S3_CREDENTIALS,
        "CELIF_ARTIFACT_STORE": "s3",
        "CELIF_S3_BUCKET": s3_server.bucket,
        "CELIF_S3_ENDPOINT_URL": s3_server.url,
        "CELIF_S3_PREFIX": f"worker-tests/{uuid.uuid4().hex[:8]}",
        "CELIF_S3_TIMEOUT_S": "2",
        # An outage is retried quickly here (the default budget is minutes).
        "CELIF_INFRA_RETRY_BASE_S": "0.5",
        "CELIF_INFRA_RETRY_MAX_DELAY_S": "2",
        "CELIF_RESEND_QUEUED_AFTER_S": "3",
        # A fresh pool child imports torch while its heartbeat thread should beat; on this
        # shared 2-core machine with moto, the API and two workers that once took over 4 s.
        "CELIF_STALE_AFTER_S": "10",
    }
    env.pop("CELIF_DATA_DIR", None)
    dep = S3Deployment(stack, s3_server, env, tmp_path_factory.mktemp("s3-deployment"))
    try:
        dep.api = dep.start_api()
        yield dep
    finally:
        for w in dep.workers:
            w.kill()
        if dep.api is not None:
            dep.api.stop()


class S3Client(Client):
    def __init__(self, stack: Stack, api: ApiProcess, token: str):
        super().__init__(stack, token)
        self.api = api

    @property
    def base(self) -> str:
        return f"{self.api.url}/api/v1"


@pytest.fixture()
def client(s3: S3Deployment, token: str) -> S3Client:
    return S3Client(s3.stack, s3.api, token)


def status_events(stack: Stack, job_id: str) -> list[dict]:
    with stack.session() as s:
        rows = s.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.kind == "status")
            .order_by(JobEvent.id)
        ).all()
        return [dict(r.data or {}) for r in rows]


def wait_checkpoints(stack: Stack, job_id: str, n: int) -> list:
    def enough():
        rows = checkpoint_rows(stack, job_id)
        return rows if len(rows) >= n and job_row(stack, job_id).status == "running" else None

    return wait_for(enough, 180, f"{n} checkpoint(s) of job {job_id}", 0.1)


def test_job_checkpoints_to_s3_and_the_api_serves_them(s3: S3Deployment, client: S3Client):
    s3.worker()
    job = client.submit(adding_spec(max_steps=150))
    done = client.wait_status(job["id"], DONE, timeout=240)
    assert done["status"] == "succeeded", done.get("error")

    rows = checkpoint_rows(s3.stack, job["id"])
    assert rows and all(r.path.startswith(f"checkpoints/{job['id']}/a1/") for r in rows)
    # Retention deleted the objects of the rows it dropped: the bucket holds exactly the rows'.
    assert s3.objects(job["id"]) == {r.path for r in rows}
    # Nothing in a shared directory: the API's data directory has no checkpoint of it.
    assert not list((s3.root / "api").rglob(f"*{job['id']}*/*.safetensors"))

    # Download: streamed from the store, the bytes the row's sha256 names.
    r = client.get(f"/jobs/{job['id']}/checkpoints/latest")
    latest = max(rows, key=lambda r: r.step)
    assert (
        hashlib.sha256(r.content).hexdigest() == latest.sha256 == r.headers["X-Checkpoint-SHA256"]
    )
    assert int(r.headers["content-length"]) == len(r.content) == latest.size

    # Predict: the API reads the checkpoint into its cache (sha256 checked) and runs it.
    x = [[[0.5, 1.0 if t in (2, 9) else 0.0] for t in range(20)] for _ in range(3)]
    p = httpx.post(f"{client.base}/jobs/{job['id']}/predict", json={"inputs": x},
                   headers=client.headers, timeout=60)  # fmt: skip
    assert p.status_code == 200, p.text
    assert len(p.json()["predictions"]) == 3
    assert list((s3.root / "api" / "cache").rglob("*.safetensors"))

    # An object corrupted in the store (same size, other bytes): its download is cut short,
    # never a complete response with the wrong bytes; predict from it is a 409, unless it is
    # the checkpoint predict just served: that model is in the API's memory, its bytes checked
    # when it was loaded, and is served from there (seen in CI when the best checkpoint was
    # also the oldest).
    served = p.json()["checkpoint"]["id"]
    oldest = min(rows, key=lambda r: r.step)
    if oldest.id != latest.id:
        bad = bytes(b ^ 0xFF for b in s3.server.client().get_object(
            Bucket=s3.server.bucket, Key=f"{s3.prefix}/{oldest.path}")["Body"].read())  # fmt: skip
        s3.server.client().put_object(
            Bucket=s3.server.bucket, Key=f"{s3.prefix}/{oldest.path}", Body=bad
        )
        with pytest.raises(httpx.HTTPError):
            got = httpx.get(f"{client.base}/jobs/{job['id']}/checkpoints/{oldest.id}",
                            headers=client.headers, timeout=30)  # fmt: skip
            got.raise_for_status()
            assert hashlib.sha256(got.content).hexdigest() == oldest.sha256
        p = httpx.post(f"{client.base}/jobs/{job['id']}/predict",
                       json={"inputs": x, "checkpoint": oldest.id},
                       headers=client.headers, timeout=60)  # fmt: skip
        assert p.status_code == (200 if oldest.id == served else 409), p.text

    # init_from: the API copies the source object to the new job's key (server-side) with its
    # sha256 beside it; the worker fetches and checks it and continues from it.
    cont = client.submit(
        {**adding_spec(max_steps=200), "init_from": {"job": job["id"], "checkpoint": "latest"}}
    )
    init = f"checkpoints/{cont['id']}/init_from.safetensors"
    assert {init, f"checkpoints/{cont['id']}/init_from.sha256"} <= s3.objects(cont["id"])
    cont = client.wait_status(cont["id"], DONE, timeout=240)
    assert cont["status"] == "succeeded", cont.get("error")

    # With download_redirect: a 307 to a presigned URL of the store, which serves the bytes.
    redirect = s3.start_api("api-redirect", CELIF_DOWNLOAD_REDIRECT="true")
    try:
        url = f"{redirect.url}/api/v1/jobs/{job['id']}/checkpoints/latest"
        r307 = httpx.get(url, headers=client.headers, timeout=30)
        assert r307.status_code == 307, r307.text
        assert r307.headers["X-Checkpoint-SHA256"] == latest.sha256
        body = httpx.get(r307.headers["location"], timeout=30).content
        assert hashlib.sha256(body).hexdigest() == latest.sha256
    finally:
        redirect.stop()


def test_resume_after_kill_reads_the_checkpoint_back_from_s3(s3: S3Deployment, client: S3Client):
    max_steps, every = 600, 50
    first = s3.worker()
    job = client.submit(adding_spec(max_steps=max_steps, eval_every=every, checkpoint_every=every))
    jid = job["id"]
    ckpt_step = wait_checkpoints(s3.stack, jid, 1)[-1].step
    first.kill()  # kill -9 of the whole worker: main process and pool child

    second = s3.start_worker()  # a fresh data directory: an empty cache
    done = client.wait_status(jid, DONE, timeout=300)
    assert done["status"] == "succeeded", done.get("error")
    assert done["attempts"] == 2
    running = [e for e in status_events(s3.stack, jid) if e.get("attempt") == 2]
    resumed_from = running[-1].get("resumed_from_step")
    assert resumed_from is not None and resumed_from >= ckpt_step, running
    # The checkpoint it resumed from came from the store into its own cache (attempt 1's
    # prefix: it writes its own under a2/; retention has since deleted the file itself).
    cache = Path(second.env["CELIF_DATA_DIR"]) / "cache" / "checkpoints" / jid
    assert (cache / "a1").is_dir() and (cache / "a2").is_dir()
    assert all(r.path.startswith(f"checkpoints/{jid}/a") for r in checkpoint_rows(s3.stack, jid))
    assert_complete_series(client.metrics(jid), max_steps, every)


def test_corrupt_object_is_detected_and_the_previous_checkpoint_used(
    s3: S3Deployment, client: S3Client
):
    max_steps, every = 600, 50
    first = s3.worker()
    job = client.submit(adding_spec(max_steps=max_steps, eval_every=every, checkpoint_every=every))
    jid = job["id"]
    wait_checkpoints(s3.stack, jid, 2)
    first.kill()
    rows = sorted(checkpoint_rows(s3.stack, jid), key=lambda r: r.step)
    newest, previous = rows[-1], rows[-2]
    # Overwrite the newest object behind the service's back (same key, other bytes).
    s3.server.client().put_object(
        Bucket=s3.server.bucket, Key=f"{s3.prefix}/{newest.path}", Body=b"not a checkpoint"
    )

    s3.start_worker()  # an empty cache: it must read the object, and finds it corrupt
    done = client.wait_status(jid, DONE, timeout=300)
    assert done["status"] == "succeeded", done.get("error")
    running = [e for e in status_events(s3.stack, jid) if e.get("attempt") == 2]
    assert running[-1].get("resumed_from_step") == previous.step, running
    assert_complete_series(client.metrics(jid), max_steps, every)


def test_store_unreachable_for_a_while_is_an_infrastructure_retry(
    s3: S3Deployment, client: S3Client
):
    max_steps, every = 600, 50
    s3.worker()
    job = client.submit(adding_spec(max_steps=max_steps, eval_every=every, checkpoint_every=every))
    jid = job["id"]
    wait_checkpoints(s3.stack, jid, 1)

    def retried():
        return [
            e for e in status_events(s3.stack, jid)
            if e.get("reason") == "infrastructure error, retrying"
        ]  # fmt: skip

    with s3.server.paused():  # the next checkpoint upload hangs and times out
        events = wait_for(retried, 120, "an infrastructure retry of the job", 0.2)
        assert events[0]["cause"] == "storage", events
        assert job_row(s3.stack, jid).status != "failed"
    done = client.wait_status(jid, DONE, timeout=300)
    assert done["status"] == "succeeded", done.get("error")
    assert_complete_series(client.metrics(jid), max_steps, every)


def test_uploaded_dataset_goes_to_the_store_and_a_job_trains_on_it(
    s3: S3Deployment, client: S3Client
):
    from tests.service.test_datasets import npz, toy_classification

    x, y = toy_classification(n=120, t=16, f=2, seed=3)
    r = httpx.post(
        f"{client.base}/datasets",
        files={"file": ("toy.npz", npz(x=x, y=y), "application/octet-stream")},
        data={"name": "toy-s3"},
        headers=client.headers,
        timeout=60,
    )
    assert r.status_code == 201, r.text
    ds = r.json()
    assert s3.server.keys(f"{s3.prefix}/datasets/") == {f"{s3.prefix}/datasets/{ds['id']}.npz"}
    s3.worker()
    spec = {
        "task": {"name": "dataset", "params": {"dataset_id": ds["id"]}},
        "model": {"neuron": "celif", "hidden": [16]},
        "training": {"max_steps": 40, "batch_size": 16, "eval_every": 20,
                     "checkpoint_every": 20, "lr": 0.01, "device": "cpu"},
    }  # fmt: skip
    done = client.wait_status(client.submit(spec)["id"], DONE, timeout=240)
    assert done["status"] == "succeeded", done.get("error")
    # The worker read it from the store into its own cache (no shared datasets directory).
    worker_dirs = [Path(w.env["CELIF_DATA_DIR"]) for w in s3.workers if w.alive()]
    assert any((d / "cache" / "datasets" / f"{ds['id']}.npz").is_file() for d in worker_dirs)
    samples = client.get(f"/jobs/{done['id']}/samples", split="val", n=2).json()
    assert samples["shape"][:2] == [2, 16]
