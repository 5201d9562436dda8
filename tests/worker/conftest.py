"""Real parts only: a fresh PostgreSQL database, a Redis database number of its own, the real
API (uvicorn subprocess) and a real Celery worker process (`celif worker`, prefork, concurrency 1).

The test process itself never imports the Celery app: the API and worker subprocesses get their
settings from the environment built here, so nothing leaks into other test folders.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from tests.helpers import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
PG_HOST = os.environ.get("CELIF_TEST_PG_HOST", "127.0.0.1")
PG_ADMIN_DSN = f"host={PG_HOST} port=5432 user=postgres dbname=test"
REDIS_HOST = os.environ.get("CELIF_TEST_REDIS_HOST", "127.0.0.1")

# Tiny jobs: the whole folder runs in a few minutes on 2 CPUs.
ADDING_SPEC: dict[str, Any] = {
    "task": {"name": "adding", "params": {"seq_len": 20, "val_size": 256, "test_size": 256}},
    "model": {"neuron": "celif", "hidden": [16, 16]},
    "training": {
        "max_steps": 200,
        "batch_size": 64,
        "eval_batch_size": 256,
        "lr": 0.005,
        "eval_every": 50,
        "checkpoint_every": 50,
        "device": "cpu",
    },
}


def adding_spec(**training: Any) -> dict[str, Any]:
    spec = {k: dict(v) if isinstance(v, dict) else v for k, v in ADDING_SPEC.items()}
    spec["training"] = {**ADDING_SPEC["training"], **training}
    return spec


def migrate(url: str) -> None:
    from jobstore.db.migrate import upgrade_database

    upgrade_database(url)


@dataclass
class Stack:
    database_url: str
    env: dict[str, str]
    data_dir: Path
    logs: Path
    api: ApiProcess | None = None
    workers: list[WorkerProcess] = field(default_factory=list)

    def session(self):
        from jobstore.db.session import session_scope

        return session_scope(self.database_url)


def _pick_redis_db() -> int:
    """An empty Redis database number (other suites may use others at the same time)."""
    for n in range(15, 0, -1):
        r = redis.Redis(host=REDIS_HOST, db=n)
        if r.dbsize() == 0 and r.set("celif-test-lock", "1", nx=True, ex=3600):
            return n
    raise RuntimeError("no empty Redis database number")


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """A new, migrated PostgreSQL database (its SQLAlchemy URL); dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@{PG_HOST}:5432/{name}"
    try:
        migrate(url)
        yield url
    finally:
        from jobstore.db.session import get_engine

        get_engine(url).dispose()
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def stack_env(database_url: str, broker_url: str, data_dir: Path) -> dict[str, str]:
    """The environment of the API and worker subprocesses: short lease timings, so a lost
    worker's job is re-queued within seconds."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CELIF_ENVIRONMENT": "development",
        "CELIF_DATA_DIR": str(data_dir),
        "CELIF_DATABASE_URL": database_url,
        "CELIF_BROKER_URL": broker_url,
        "CELIF_HEARTBEAT_INTERVAL_S": "0.5",
        "CELIF_STALE_AFTER_S": "4",
        "CELIF_REAPER_INTERVAL_S": "1",
        "CELIF_METRICS_FLUSH_INTERVAL_S": "0.5",
        "CELIF_CANCEL_POLL_INTERVAL_S": "0.1",
        "CELIF_MAX_INFRA_RETRIES": "2",
        "CELIF_CHECKPOINT_KEEP_LAST": "2",
        "CELIF_WORKER_ANNOUNCE_INTERVAL_S": "0.5",
        "CELIF_WORKER_OFFLINE_AFTER_S": "3",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator[Stack]:
    with fresh_database("celif_worker") as url:
        redis_db = _pick_redis_db()
        data = tmp_path_factory.mktemp("celif-data")
        logs = tmp_path_factory.mktemp("logs")
        env = stack_env(url, f"redis://{REDIS_HOST}:6379/{redis_db}", data)
        s = Stack(url, env, data, logs)
        try:
            yield s
        finally:
            for w in s.workers:
                w.kill()
            if s.api is not None:
                s.api.stop()
            redis.Redis(host=REDIS_HOST, db=redis_db).flushdb()


# ----------------------------------------------------------------------------- processes
class ApiProcess:
    def __init__(self, env: dict[str, str], log: Path, host: str = "127.0.0.1"):
        self.env, self.log_path, self.host = env, log, host
        self.port = free_port()
        self.url = f"http://{host}:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> ApiProcess:
        cmd = [
            sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory",
            "--host", self.host, "--port", str(self.port), "--log-level", "warning",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=self.env, cwd=REPO, stdout=log, stderr=log, start_new_session=True
            )
        wait_for(self._healthy, 60, f"API on {self.url} (log {self.log_path})", 0.1)
        return self

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"API exited: {self.log_path.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class WorkerProcess:
    """`celif worker` in its own process group (main process + its prefork pool child);
    `queues`: its `--queues` (default: the CLI's, by the devices found).

    `prefix` runs it through a launcher that ends by exec-ing it (the fault tests' `ip netns
    exec ...`), so the process group is still the worker's."""

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        queues: str | None = None,
        prefix: Sequence[str] = (),
    ):
        self.env, self.log_path, self.queues, self.prefix = env, log, queues, list(prefix)
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        return self.launch().wait_ready()

    def launch(self) -> WorkerProcess:
        """Start the process without waiting (several workers boot side by side)."""
        cmd = [*self.prefix, sys.executable, "-m", "celif_cli.main", "worker", "--loglevel", "INFO"]
        if self.queues is not None:
            cmd += ["--queues", self.queues]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=self.env, cwd=REPO, stdout=log, stderr=log, start_new_session=True
            )
        return self

    def wait_ready(self, timeout: float = 90) -> WorkerProcess:
        wait_for(self._ready, timeout, f"worker ready (log {self.log_path})", 0.1)
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited: {self.log_path.read_text()[-3000:]}")
        return " ready." in self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9 of the worker: main process and pool child at once (a lost machine)."""
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


@pytest.fixture(scope="session")
def api(stack: Stack) -> ApiProcess:
    if stack.api is None or stack.api.proc.poll() is not None:
        stack.api = ApiProcess(stack.env, stack.logs / "api.log").start()
    return stack.api


@pytest.fixture()
def worker(stack: Stack) -> WorkerProcess:
    """The one live worker (a test that kills it leaves the next test a fresh one)."""
    live = [w for w in stack.workers if w.alive()]
    if live:
        return live[0]
    w = WorkerProcess(stack.env, stack.logs / f"worker-{len(stack.workers)}.log").start()
    stack.workers.append(w)
    return w


@pytest.fixture(scope="session")
def token(stack: Stack) -> str:
    from service.auth.service import create_user_and_token

    with stack.session() as session:
        return create_user_and_token(session, f"worker-tests-{uuid.uuid4().hex[:6]}")


class Client:
    """A thin API client (the API process may be restarted under it)."""

    def __init__(self, stack: Stack, token: str):
        self.stack = stack
        self.headers = {"Authorization": f"Bearer {token}"}

    @property
    def base(self) -> str:
        return f"{self.stack.api.url}/api/v1"

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(f"{self.base}/jobs", json=spec, headers=self.headers, timeout=30)
        assert r.status_code == 201, r.text
        return r.json()

    def get(self, path: str, **params) -> httpx.Response:
        r = httpx.get(f"{self.base}{path}", headers=self.headers, params=params, timeout=30)
        assert r.status_code == 200, f"{path}: {r.status_code} {r.text[:500]}"
        return r

    def post(self, path: str) -> httpx.Response:
        return httpx.post(f"{self.base}{path}", headers=self.headers, timeout=30)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.get(f"/jobs/{job_id}").json()

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 120) -> dict:
        def check():
            job = self.job(job_id)
            return job if job["status"] in statuses else None

        return wait_for(check, timeout, f"job {job_id} in {statuses}", 0.1)

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        points: list[dict[str, Any]] = []
        after = 0
        while True:
            body = self.get(f"/jobs/{job_id}/metrics", after=after).json()
            points.extend(body["items"])
            if not body["has_more"] or not body["items"]:
                return points
            after = body["last_seq"]


@pytest.fixture()
def client(stack: Stack, api: ApiProcess, token: str) -> Client:
    return Client(stack, token)
