"""SSE on PostgreSQL woken by LISTEN/NOTIFY: with the poll and the notify fallback set far
beyond the read deadline, only the notifications can deliver the events in time; every event
arrives once, in order, across a reconnect with Last-Event-ID."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from jobstore.notify import EventListener
from service.app import create_app
from service.jobs import sse
from tests.service.conftest import ServerThread
from tests.service.test_job_events import points, read_events, set_status, submit, write_points


@pytest.fixture
def notify_client(db, settings, tokens):
    if not db.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite polls (tests/service/test_job_events)")
    app = create_app(settings)
    app.state.sse_poll_interval_s = 600.0  # not used on PostgreSQL
    app.state.sse_notify_fallback_s = 600.0
    app.state.sse_keepalive_s = 600.0
    with (
        ServerThread(app) as srv,
        httpx.Client(
            base_url=srv.url, headers={"Authorization": f"Bearer {tokens.alice}"}, timeout=30
        ) as c,
    ):
        yield c, app
    listener = getattr(app.state, "event_listener", None)
    if listener is not None:
        listener.stop()


def test_notify_delivers_every_event_once_in_order_across_a_reconnect(notify_client, db):
    client, app = notify_client
    job_id = submit(client)
    total = 60

    def writer() -> None:
        listener = sse.event_listener(app.state, app.state.settings)
        assert isinstance(listener, EventListener)
        listener.connected.wait(10)
        time.sleep(0.3)  # the stream below is open and waiting
        set_status(db, job_id, "running", attempt=1)
        for i in range(0, total, 3):
            write_points(db, job_id, points(i, 3))
            time.sleep(0.02)

    t = threading.Thread(target=writer)
    t.start()
    part1 = read_events(client, job_id, n=32, timeout=60)  # queued, running, 30 points
    t.join()
    last_id = part1[-1][0]
    set_status(db, job_id, "succeeded")
    part2 = read_events(client, job_id, headers={"Last-Event-ID": str(last_id)}, timeout=60)
    assert part2[-1] == (None, "end", {"status": "succeeded"})
    events = part1 + part2[:-1]
    ids = [e[0] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [e[2]["step"] for e in events if e[1] == "metric"] == list(range(total))
    assert [e[2]["status"] for e in events if e[1] == "status"] == ["queued", "running", "succeeded"]  # fmt: skip


def test_a_stream_waiting_on_notify_wakes_for_a_commit(notify_client, db):
    client, app = notify_client
    job_id = submit(client)
    got: list = []
    reader = threading.Thread(
        target=lambda: got.extend(read_events(client, job_id, n=2, timeout=60))
    )
    reader.start()
    listener = sse.event_listener(app.state, app.state.settings)
    listener.connected.wait(10)
    time.sleep(0.5)  # the stream has read "queued" and waits (its poll is 600 s)
    set_status(db, job_id, "running", attempt=1)
    reader.join(60)
    assert [e[2]["status"] for e in got] == ["queued", "running"]
