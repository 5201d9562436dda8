"""The fault tests' harness: worker hosts in network namespaces, private PostgreSQL and Redis
instances the tests restart, the real API and real `celif worker` processes.

Run them with `pytest -m faults -s` (as root: the namespaces need it; the figures are printed).
Without root or `ip netns` the multi-host test skips with the reason; CELIF_REQUIRE_NETNS=1 (CI)
turns every such skip of this folder into a failure.

Everything a test starts is stopped by the `cluster` fixture's finalizer, whatever the outcome:
worker processes first (they run inside the namespaces), then the API, Redis and PostgreSQL,
then the namespaces and links. Names carry the pytest process's pid; leftovers of a run that
died before its cleanup are removed when the next one builds its network.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.faults.netns import Host, Network, netns_unavailable
from tests.services import PrivatePostgres, PrivateRedis, require
from tests.worker.conftest import ApiProcess, Client, Stack, WorkerProcess, stack_env

# Lease timing of every process here (the `stack_env` defaults, spelled out because the tests'
# figures depend on them): a host that stops heartbeating loses its job after STALE_AFTER_S,
# found by a reaper pass (every REAPER_INTERVAL_S) in any live worker.
LEASE_ENV = {
    "CELIF_HEARTBEAT_INTERVAL_S": "0.5",
    # 6 s, not the worker suite's 4: on a loaded 2-core machine a live worker's heartbeat
    # thread can stall for seconds, and here a stall would hand a live job to another host.
    "CELIF_STALE_AFTER_S": "6",
    "CELIF_REAPER_INTERVAL_S": "1",
    "CELIF_RESEND_QUEUED_AFTER_S": "2",
}

# Who wrote what, from the server's side: a row trigger on the tables a worker writes records
# each committed insert, update and delete with the client's source address (each host connects
# from its own) and the server's clock. A write rolled back (a lost lease) leaves no row.
AUDIT_SQL = """
CREATE TABLE fault_audit (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    client inet DEFAULT inet_client_addr(),
    tbl text NOT NULL, op text NOT NULL, job_id text, step int, kind text, status text
);
CREATE FUNCTION fault_audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    IF TG_TABLE_NAME = 'jobs' THEN
        INSERT INTO fault_audit (tbl, op, job_id, step, status)
        VALUES ('jobs', TG_OP, r.id, r.step, r.status);
    ELSIF TG_TABLE_NAME = 'job_events' THEN
        INSERT INTO fault_audit (tbl, op, job_id, step, kind, status)
        VALUES ('job_events', TG_OP, r.job_id, r.step, r.kind, r.data ->> 'status');
    ELSE
        INSERT INTO fault_audit (tbl, op, job_id, step)
        VALUES (TG_TABLE_NAME, TG_OP, r.job_id, r.step);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER fault_audit_jobs AFTER INSERT OR UPDATE OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION fault_audit_row();
CREATE TRIGGER fault_audit_events AFTER INSERT OR UPDATE OR DELETE ON job_events
    FOR EACH ROW EXECUTE FUNCTION fault_audit_row();
CREATE TRIGGER fault_audit_checkpoints AFTER INSERT OR UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION fault_audit_row();
"""


def libpq_dsn(url: str) -> str:
    """psycopg's form of a `postgresql+psycopg://` URL."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def install_audit(url: str) -> None:
    with psycopg.connect(libpq_dsn(url), autocommit=True) as conn:
        conn.execute(AUDIT_SQL)


def audit_rows(url: str, job_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(libpq_dsn(url)) as conn:
        cur = conn.execute(
            "SELECT at, host(client) AS client, tbl, op, step, kind, status FROM fault_audit"
            " WHERE job_id = %s ORDER BY id",
            (job_id,),
        )
        names = [c.name for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def lost_and_duplicated(points: list[dict[str, Any]], max_steps: int) -> tuple[int, int]:
    """The figures of a job's metric series: train-loss steps missing between its first step
    and `max_steps` (at the series' own spacing), and points stored more than once."""
    from tests.worker.test_jobs import series

    train = sorted(p["step"] for p in series(points, "train", "loss"))
    gap = min((b - a for a, b in zip(train, train[1:], strict=False)), default=1)
    lost = len(set(range(train[0], max_steps + 1, gap)) - set(train)) if train else max_steps
    keys = Counter((p["split"], p["name"], p["step"]) for p in points)
    return lost, sum(n - 1 for n in keys.values())


# ------------------------------------------------------------------------------ storage
class SharedDirStorage:
    """Artifacts in one directory every host and the API see (the namespaces share the
    filesystem): the "NFS / shared volume" deployment, `CELIF_ARTIFACT_STORE=local`."""

    name = "shared directory"

    def start(self, address: str, root: Path, logs: Path) -> None:
        self.data = root / "shared-data"

    def env(self, host: str | None) -> dict[str, str]:
        """The storage settings of a process on `host` (None: the API)."""
        return {"CELIF_DATA_DIR": str(self.data)}

    def read(self, key: str) -> bytes:
        """A checkpoint row's bytes, read back by the test."""
        return (self.data / "storage" / key).read_bytes()

    def keys(self, job_id: str) -> set[str]:
        """The job's checkpoint artifacts (keys as rows store them)."""
        folder = self.data / "storage" / "checkpoints" / job_id
        return {f"checkpoints/{job_id}/{p.name}" for p in folder.glob("step_*.safetensors")}

    def close(self) -> None:
        pass


class S3Storage:
    """An S3 API server (moto's, tests/helpers.py) on the service address, reachable from every
    host; each host and the API has a data directory of its own (its local cache), so nothing
    is shared but PostgreSQL, Redis, the store and the API. Production uses a real store."""

    name = "S3 (moto server), a data directory per host"
    bucket = "celif-faults"
    prefix = "faults"

    def start(self, address: str, root: Path, logs: Path) -> None:
        from tests.helpers import create_bucket, start_moto_server

        self.root = root
        self._log = (logs / "moto.log").open("ab")
        self.url, self.proc = start_moto_server(address, log=self._log)
        create_bucket(self.url, self.bucket)

    def env(self, host: str | None) -> dict[str, str]:
        from tests.helpers import S3_CREDENTIALS

        data = self.root / f"data-{host or 'api'}"
        data.mkdir(parents=True, exist_ok=True)
        return {
            **S3_CREDENTIALS,
            "CELIF_DATA_DIR": str(data),
            "CELIF_ARTIFACT_STORE": "s3",
            "CELIF_S3_BUCKET": self.bucket,
            "CELIF_S3_ENDPOINT_URL": self.url,
            "CELIF_S3_PREFIX": self.prefix,
        }

    def _client(self):
        from tests.helpers import S3Server

        return S3Server(self.url, self.proc, self.bucket)

    def read(self, key: str) -> bytes:
        obj = self._client().client().get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")
        return obj["Body"].read()

    def keys(self, job_id: str) -> set[str]:
        keys = self._client().keys(f"{self.prefix}/checkpoints/{job_id}/")
        return {k.removeprefix(f"{self.prefix}/") for k in keys}

    def close(self) -> None:
        from tests.helpers import stop_process

        if getattr(self, "proc", None) is not None:
            stop_process(self.proc)
            self._log.close()


STORAGES = {"s3": S3Storage, "shared-dir": SharedDirStorage}


@pytest.fixture()
def storage(request) -> SharedDirStorage | S3Storage:
    """The artifact store of the multi-host tests (S3 unless a test asks for another with
    `@pytest.mark.parametrize("storage", [...], indirect=True)`); the cluster starts it on the
    service address once the network exists, and stops it."""
    return STORAGES[getattr(request, "param", "s3")]()


# ------------------------------------------------------------------------------ the cluster
@dataclass
class Cluster:
    """What one fault test runs: a private PostgreSQL and Redis, the API, workers (on hosts
    when there is a network), and a client. `close()` stops all of it."""

    root: Path
    logs: Path
    network: Network | None = None
    pg: PrivatePostgres | None = None
    redis: PrivateRedis | None = None
    api: ApiProcess | None = None
    workers: list[WorkerProcess] = field(default_factory=list)
    database_url: str = ""
    stack: Stack | None = None
    client: Client | None = None
    storage: Any = None

    @property
    def service_address(self) -> str:
        return self.network.service_address if self.network else "127.0.0.1"

    def env(self, host: Host | None, **extra: str) -> dict[str, str]:
        """The environment of a process on `host` (None: the root namespace, e.g. the API)."""
        addr = self.service_address if host is not None else "127.0.0.1"
        env = stack_env(self.pg.url(addr), self.redis.url(addr), self.root / "data")
        env.update(LEASE_ENV)
        if self.storage is not None:
            env.update(self.storage.env(host.name if host else None))
        env.update(extra)
        return env

    def start_services(self, *, appendonly: bool = True) -> None:
        if self.storage is not None:
            self.storage.start(self.service_address, self.root, self.logs)
        listen = ["127.0.0.1"] + ([self.network.service_address] if self.network else [])
        trusted = [self.network.subnet] if self.network else []
        self.pg = PrivatePostgres(listen=listen, trusted=trusted).start()
        self.database_url = self.pg.create_database()
        install_audit(self.database_url)
        self.redis = PrivateRedis(self.root / "redis", appendonly=appendonly, bind=listen).start()

    def start_api(self) -> Client:
        from service.auth.service import create_user_and_token

        self.api = ApiProcess(self.env(None), self.logs / "api.log", host=self.service_address)
        self.api.start()
        self.stack = Stack(self.database_url, self.env(None), self.root / "data", self.logs)
        self.stack.api = self.api
        with self.stack.session() as session:
            token = create_user_and_token(session, f"faults-{uuid.uuid4().hex[:6]}")
        self.client = Client(self.stack, token)
        return self.client

    def worker(self, host: Host | None, name: str, **extra: str) -> WorkerProcess:
        """A `celif worker` on `host`, not yet started (start several at once: `start_all`)."""
        prefix = host.command([]) if host is not None else []
        w = WorkerProcess(self.env(host, **extra), self.logs / f"worker-{name}.log", prefix=prefix)
        self.workers.append(w)
        return w

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        if self.api is not None:
            self.api.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.storage is not None:
            self.storage.close()
        if self.pg is not None:
            from jobstore.db.session import get_engine

            if self.database_url:
                get_engine(self.database_url).dispose()
            self.pg.cleanup()
        if self.network is not None:
            self.network.down()


def start_all(workers: list[WorkerProcess]) -> None:
    """Boot the workers side by side (each takes seconds on a busy machine), then wait for
    every one to be ready."""
    for w in workers:
        w.launch()
    for w in workers:
        w.wait_ready(120)


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster without network namespaces (the PostgreSQL and Redis restart tests)."""
    root = Path(tempfile.mkdtemp(prefix="celif-faults-"))
    logs = tmp_path / "logs"
    logs.mkdir()
    c = Cluster(root=root, logs=logs)
    try:
        yield c
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def hosts_cluster(tmp_path: Path, storage) -> Iterator[Cluster]:
    """Two worker hosts in network namespaces, the services on the service address."""
    reason = netns_unavailable()
    require(reason is None, f"the multi-host test {reason}")
    root = Path(tempfile.mkdtemp(prefix="celif-faults-"))
    logs = tmp_path / "logs"
    logs.mkdir()
    c = Cluster(root=root, logs=logs, storage=storage)
    try:
        c.network = Network(("a", "b")).up()
        yield c
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)
