"""Private service instances a test starts, restarts and stops itself (no fixtures): PostgreSQL
and Redis on free ports, their files in a temporary folder. The machine's own PostgreSQL
(5432) and Redis (6379) are never restarted.

A test that cannot run them (binaries missing, root without a `postgres` OS user) skips through
`require(...)`; with CELIF_REQUIRE_NETNS=1 (CI) it fails instead, so a fault test never passes
as a skip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg
import pytest
import redis

from tests.helpers import free_port, wait_for

REQUIRE_ENV = "CELIF_REQUIRE_NETNS"


def require(ok: bool, reason: str) -> None:
    """Skip with `reason` unless `ok`; under CELIF_REQUIRE_NETNS=1 fail instead."""
    if ok:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _run(argv: Sequence[str], what: str, timeout: float = 120) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr or done.stdout}")
    return done.stdout


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own: `initdb` into a temporary folder, trust auth,
    listening on `listen` (127.0.0.1 and, for the network-namespace tests, the service address)
    on a free port. PostgreSQL refuses to run as root: as root it runs as the `postgres` OS user.
    """

    def __init__(self, listen: Sequence[str] = ("127.0.0.1",), trusted: Sequence[str] = ()):
        for tool in ("initdb", "pg_ctl", "postgres"):
            require(shutil.which(tool) is not None, f"`{tool}` is not on PATH")
        self.as_user: list[str] = []
        owner = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                require(False, "running as root and no `postgres` OS user to run initdb as")
            require(shutil.which("runuser") is not None, "`runuser` is not on PATH")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.listen = list(listen)
        self.trusted = ["127.0.0.1/32", *trusted]  # client networks allowed (pg_hba.conf)
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="celif-pg-"))
        if owner is not None:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.restarts = 0

    def url(self, host: str = "127.0.0.1", dbname: str = "celif") -> str:
        return f"postgresql+psycopg://postgres@{host}:{self.port}/{dbname}"

    def start(self) -> PrivatePostgres:
        if not self.data.exists():
            initdb = ["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust"]
            _run([*self.as_user, *initdb, "-E", "UTF8", "--no-sync", "--no-instructions"], "initdb")
            hba = "".join(f"host all all {net} trust\n" for net in self.trusted)
            (self.data / "pg_hba.conf").write_text("local all all trust\n" + hba)
        self._pg_ctl("start", "-l", str(self.log))
        wait_for(self._up, 60, f"PostgreSQL on port {self.port} (log {self.log})", 0.1)
        return self

    def _pg_ctl(self, *args: str) -> None:
        options = (
            f"-p {self.port} -c listen_addresses='{','.join(self.listen)}' "
            f"-c unix_socket_directories='{self.root}' -c fsync=off -c max_connections=200"
        )
        pg_ctl = ["pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-o", options]
        _run([*self.as_user, *pg_ctl, *args], f"pg_ctl {args[0]}")

    def _up(self) -> bool:
        try:
            with psycopg.connect(self.admin_dsn(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def admin_dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def create_database(self, dbname: str = "celif") -> str:
        """Create and migrate `dbname`; returns its SQLAlchemy URL (on 127.0.0.1)."""
        from jobstore.db.migrate import upgrade_database

        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        url = self.url(dbname=dbname)
        upgrade_database(url)
        return url

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every client connection is terminated, and the server is
        unreachable until it is back (the call waits for that)."""
        self._pg_ctl("restart", "-m", "fast", "-l", str(self.log))
        self.restarts += 1
        wait_for(self._up, 60, f"PostgreSQL back on port {self.port}", 0.1)

    def down_for(self, seconds: float) -> None:
        """`pg_ctl stop -m fast`, `seconds` with no server at all, then start again."""
        self._pg_ctl("stop", "-m", "fast")
        time.sleep(seconds)
        self._pg_ctl("start", "-l", str(self.log))
        self.restarts += 1
        wait_for(self._up, 60, f"PostgreSQL back on port {self.port}", 0.1)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._pg_ctl("stop", "-m", "immediate")
            except RuntimeError:
                pass

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """A redis-server of the test's own on a free port, bound to `bind`. `appendonly=True` is
    the production configuration (docker-compose.yml): a restart keeps the queue and Celery's
    unacked hash; without it (and without snapshots) a restart loses every message."""

    def __init__(self, workdir: Path, *, appendonly: bool, bind: Sequence[str] = ("127.0.0.1",)):
        require(shutil.which("redis-server") is not None, "`redis-server` is not on PATH")
        self.port = free_port()
        self.workdir, self.appendonly, self.bind = Path(workdir), appendonly, list(bind)
        self.proc: subprocess.Popen | None = None

    def url(self, host: str = "127.0.0.1", db: int = 0) -> str:
        return f"redis://{host}:{self.port}/{db}"

    def start(self) -> PrivateRedis:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Protected mode refuses every client not on loopback; the hosts of the network-namespace
        # tests connect from their own addresses (there is no password here).
        protected = "yes" if self.bind == ["127.0.0.1"] else "no"
        argv = ["redis-server", "--port", str(self.port), "--bind", *self.bind]
        argv += ["--protected-mode", protected, "--save", "", "--dir", str(self.workdir)]
        argv += ["--appendonly", "yes" if self.appendonly else "no"]
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._up, 20, f"redis-server on {self.port}", 0.05)
        return self

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"redis-server on {self.port} exited ({self.proc.returncode})")
        try:
            return redis.Redis(host="127.0.0.1", port=self.port).ping()
        except redis.ConnectionError:
            return False

    def stop(self, *, clean: bool = False) -> None:
        """SIGKILL (a crash: with appendonly the AOF keeps what was written), or SIGTERM with
        `clean` (Redis writes its files and exits)."""
        if self.proc is not None and self.proc.poll() is None:
            if clean:
                self.proc.terminate()
            else:
                self.proc.kill()
            self.proc.wait(30)
