"""Commit-to-delivery delay of live job events over SSE, PostgreSQL polled (the 0.5 s poll) and
woken by LISTEN/NOTIFY, side by side in one run.

    python bench/sse_delivery.py [--pg-admin postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

A temp PostgreSQL database (migrated, dropped at the end), the API in this process (uvicorn in
a thread), one running job; for each mode one SSE stream reads while this script appends
`--events` metric points in separate commits at random intervals, and the delay from each
commit's return to the event's arrival at the client is recorded.
"""

from __future__ import annotations

import argparse
import random
import secrets
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure(url: str, token: str, db: str, job_id: str, events: int) -> list[float]:
    from jobstore.db.session import session_scope
    from jobstore.events import append_metric_points

    committed: dict[int, float] = {}
    arrived: dict[int, float] = {}
    ready = threading.Event()

    def reader() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            with c.stream("GET", f"/api/v1/jobs/{job_id}/events", params={"after": 0}) as r:
                ready.set()
                for line in r.iter_lines():
                    if line.startswith("data:") and '"step"' in line:
                        step = int(line.split('"step": ')[1].split(",")[0].split("}")[0])
                        arrived[step] = time.monotonic()
                        if len(arrived) >= events:
                            return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    ready.wait(30)
    time.sleep(0.5)
    rng = random.Random(0)
    for step in range(events):
        time.sleep(rng.uniform(0.05, 0.3))
        with session_scope(db) as s:
            append_metric_points(s, job_id, [{"step": step, "name": "loss", "value": 1.0}])
        committed[step] = time.monotonic()
    t.join(30)
    return [1000 * (arrived[k] - committed[k]) for k in committed if k in arrived]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pg-admin", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--events", type=int, default=40)
    args = p.parse_args(argv)

    from jobstore.db.migrate import upgrade_database
    from jobstore.db.models import Job, User
    from jobstore.db.session import get_engine, session_scope
    from jobstore.settings import Settings
    from service.app import create_app
    from service.auth.service import create_user_and_token
    from tests.service.conftest import ServerThread
    from tests.service.predict_helpers import SPECS

    name = f"celif_bench_sse_{secrets.token_hex(4)}"
    admin = create_engine(args.pg_admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    db = make_url(args.pg_admin).set(database=name).render_as_string(hide_password=False)
    rows = []
    try:
        upgrade_database(db)
        with session_scope(db) as s:
            token = create_user_and_token(s, "alice")
            user = s.query(User).filter_by(name="alice").one()
            spec = SPECS["adding"]
            job = Job(owner_id=user.id, name="sse", task_name="adding", neuron="celif", spec=spec, status="running", step=0, max_steps=1)  # fmt: skip
            s.add(job)
            s.flush()
            job_id = job.id
        for mode, notify in (("poll (0.5 s)", False), ("LISTEN/NOTIFY", True)):
            settings = Settings(database_url=db, data_dir=Path("/tmp"), sse_listen_notify=notify)
            app = create_app(settings)
            with ServerThread(app) as srv:
                delays = measure(srv.url, token, db, job_id, args.events)
                with session_scope(db) as s:  # the next mode starts from an empty series
                    from jobstore.events import delete_metric_events

                    delete_metric_events(s, job_id, after_step=None)
            listener = getattr(app.state, "event_listener", None)
            if listener is not None:
                listener.stop()
            delays.sort()
            rows.append((mode, len(delays), statistics.median(delays), delays[int(0.99 * (len(delays) - 1))], delays[-1]))  # fmt: skip
    finally:
        get_engine(db).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    print("| SSE wake-up | events | p50 ms | p99 ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for mode, n, p50, p99, worst in rows:
        print(f"| {mode} | {n} | {p50:.1f} | {p99:.1f} | {worst:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
