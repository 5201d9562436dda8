"""Service tests against the real app over real HTTP (uvicorn on a free port), a real database
(a fresh PostgreSQL database per test session, migrations applied; also SQLite) and a real
Redis broker. Isolation per test: every table emptied; CELIF_* environment reset.

Environment knobs: CELIF_TEST_PG_ADMIN_URL (a database we may CREATE DATABASE from),
CELIF_TEST_REDIS_HOST, CELIF_TEST_DATABASES ("postgresql,sqlite" by default; PostgreSQL is
required, SQLite is the embedded mode's database).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from jobstore.db.migrate import upgrade_database
from jobstore.db.session import get_engine, session_scope
from jobstore.settings import Settings, reset_settings
from service.app import create_app
from service.auth.service import create_user_and_token

PG_ADMIN_URL = os.environ.get(
    "CELIF_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_HOST = os.environ.get("CELIF_TEST_REDIS_HOST", "127.0.0.1")
DATABASES = [
    d.strip() for d in os.environ.get("CELIF_TEST_DATABASES", "postgresql,sqlite").split(",")
]
TABLES = ("job_events", "checkpoints", "jobs", "studies", "datasets", "api_tokens", "users")


def _clean_celif_env(mp: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CELIF_") and not name.startswith(("CELIF_TEST_", "CELIF_MNIST_DIR")):
            mp.delenv(name)


@pytest.fixture(scope="session")
def _session_env() -> Iterator[None]:
    """No CELIF_* variable of the developer's shell leaks into the session-wide fixtures."""
    mp = pytest.MonkeyPatch()
    _clean_celif_env(mp)
    mp.chdir(Path(__file__).parent)  # no stray .env from the working directory
    yield
    mp.undo()


# ----------------------------------------------------------------------------- databases
def create_pg_database() -> str:
    name = f"celif_svc_{os.getpid()}_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    name = make_url(url).database
    get_engine(url).dispose()
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _pick_redis_db() -> int:
    """An empty Redis database number, claimed with a lock key (the worker suite scans from 15
    down, this one from 1 up; either skips a database in use)."""
    for n in range(1, 16):
        r = redis.Redis(host=REDIS_HOST, db=n)
        if r.dbsize() == 0 and r.set("celif-test-lock", "1", nx=True, ex=3600):
            return n
    raise RuntimeError("no empty Redis database number")


@pytest.fixture(scope="session")
def redis_db(_session_env) -> Iterator[redis.Redis]:
    r = redis.Redis(host=REDIS_HOST, db=_pick_redis_db())
    yield r
    r.flushdb()


@dataclass
class Backend:
    name: str
    url: str


@pytest.fixture(scope="session", params=DATABASES)
def backend(request, _session_env, tmp_path_factory) -> Iterator[Backend]:
    if request.param == "postgresql":
        url = create_pg_database()
        upgrade_database(url)
        yield Backend("postgresql", url)
        drop_pg_database(url)
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'celif.db'}"
        upgrade_database(url)
        yield Backend("sqlite", url)
        get_engine(url).dispose()


@pytest.fixture(scope="session")
def settings(backend: Backend, redis_db: redis.Redis, tmp_path_factory) -> Settings:
    data = tmp_path_factory.mktemp(f"data-{backend.name}")
    return Settings(
        _env_file=None,
        data_dir=data,
        database_url=backend.url,
        broker_url=f"redis://{REDIS_HOST}:6379/{redis_db.connection_pool.connection_kwargs['db']}",
        storage_dir=data / "storage",
        max_body_bytes=64 * 1024,
    )


# ----------------------------------------------------------------------------- the server
class ServerThread:
    def __init__(self, app) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def app(settings: Settings):
    app = create_app(settings)
    app.state.sse_poll_interval_s = 0.05
    app.state.sse_keepalive_s = 0.3
    return app


@pytest.fixture(scope="session")
def server(app) -> Iterator[ServerThread]:
    with ServerThread(app) as srv:
        yield srv


# ----------------------------------------------------------------------------- per test
@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, request) -> Iterator[None]:
    """Each test sees only CELIF_* values that point at this session's database and broker, and
    a fresh `get_settings()`."""
    _clean_celif_env(monkeypatch)
    if "settings" in request.fixturenames:
        s: Settings = request.getfixturevalue("settings")
        monkeypatch.setenv("CELIF_DATABASE_URL", s.database_url)
        monkeypatch.setenv("CELIF_BROKER_URL", s.broker_url)
        monkeypatch.setenv("CELIF_DATA_DIR", str(s.data_dir))
        monkeypatch.setenv("CELIF_STORAGE_DIR", str(s.storage_dir))
    reset_settings()
    yield
    reset_settings()


@pytest.fixture
def db(backend: Backend) -> Iterator[str]:
    """An empty database (every table emptied before the test). Yields its URL."""
    engine = get_engine(backend.url)
    with engine.begin() as conn:
        if backend.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        else:
            for table in TABLES:
                conn.execute(text(f"DELETE FROM {table}"))
    yield backend.url


@dataclass
class Users:
    alice: str  # tokens
    bob: str


@pytest.fixture
def tokens(db: str) -> Users:
    with session_scope(db) as session:
        alice = create_user_and_token(session, "alice")
        bob = create_user_and_token(session, "bob")
    return Users(alice, bob)


@pytest.fixture
def client(server: ServerThread, tokens: Users) -> Iterator[httpx.Client]:
    """Alice's client against the running server."""
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {tokens.alice}"}, timeout=30
    ) as c:
        yield c


@pytest.fixture
def bob(server: ServerThread, tokens: Users) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {tokens.bob}"}, timeout=30
    ) as c:
        yield c


@pytest.fixture
def anon(server: ServerThread, db: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c
