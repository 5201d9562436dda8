"""The job event stream as Server-Sent Events, and its ordering rule.

Events are read in pages by `id > cursor` (jobstore/events.py: ids of one job commit in order),
framed as `id:`/`event:`/`data:`, resumed from `Last-Event-ID`, kept alive with comments, and
ended with `event: end` once the job has finished and its last event was sent.

Between reads a stream waits: on PostgreSQL for the job's NOTIFY (`jobstore.notify`; the wait
is armed before each read, so a commit between the read and the wait still wakes it), with a
slow poll (`NOTIFY_FALLBACK_S`) in case the listener's connection dropped; on SQLite it polls.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from jobstore import jobs as repo
from jobstore.db.models import TERMINAL_STATES
from service.errors import BadRequest
from service.jobs.schemas import event_payload

# Event ids (`seq`) are PostgreSQL bigint: a larger `after` could only fail in the database.
MAX_SEQ = 2**63 - 1

# Timing; `create_app` copies these onto app.state, where tests may shorten them.
POLL_INTERVAL_S = 0.5
KEEPALIVE_S = 15.0
BATCH = 500
NOTIFY_FALLBACK_S = 5.0


class Wakeup:
    """An asyncio wake-up for one job's stream, set from the listener's thread."""

    def __init__(self, listener, job_id: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._unsubscribe = listener.subscribe(job_id, self._set)

    def _set(self) -> None:
        self._loop.call_soon_threadsafe(self._event.set)

    def arm(self) -> None:
        self._event.clear()

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            pass

    def close(self) -> None:
        self._unsubscribe()


def parse_last_event_id(value: str | None) -> int:
    if value is None or not value.strip():
        return 0
    try:
        seq = int(value.strip())
    except ValueError as exc:
        raise BadRequest("Last-Event-ID must be an event id sent by this stream") from exc
    if seq > MAX_SEQ:  # refused before the stream starts: the database's ids are bigint
        raise BadRequest(f"Last-Event-ID {seq} is over the largest event id ({MAX_SEQ})")
    return max(seq, 0)


def _read_batch(factory: sessionmaker[Session], job_id: str, after: int) -> tuple[list, str | None]:
    # The status is read *before* the events: a terminal status is committed together with its
    # event, so once we see it, the following read includes that final event.
    with factory() as s:
        job = repo.get_job(s, job_id)
        status = job.status if job is not None else None
        rows = repo.list_events(s, job_id, after=after, limit=BATCH)
        return [(e.id, e.kind, event_payload(e)) for e in rows], status


async def event_stream(
    factory: sessionmaker[Session],
    job_id: str,
    after: int,
    *,
    poll_s: float,
    keepalive_s: float,
    listener=None,
    fallback_s: float = NOTIFY_FALLBACK_S,
) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"
    wakeup = Wakeup(listener, job_id) if listener is not None else None
    try:
        last_write = time.monotonic()
        while True:
            if wakeup is not None:
                wakeup.arm()
            batch, status = await run_in_threadpool(_read_batch, factory, job_id, after)
            for seq, kind, payload in batch:
                yield f"id: {seq}\nevent: {kind}\ndata: {json.dumps(payload, allow_nan=False)}\n\n"
                after = seq
            if batch:
                last_write = time.monotonic()
            if status is None or (status in TERMINAL_STATES and len(batch) < BATCH):
                yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
                return
            if len(batch) == BATCH:
                continue  # more backlog: no sleep
            if time.monotonic() - last_write >= keepalive_s:
                yield ": keepalive\n\n"
                last_write = time.monotonic()
            if wakeup is None:
                await asyncio.sleep(poll_s)
            else:
                await wakeup.wait(min(keepalive_s, fallback_s))
    finally:
        if wakeup is not None:
            wakeup.close()


_LISTENER_LOCK = threading.Lock()


def event_listener(state, settings):
    """The app's `EventListener` (PostgreSQL with `settings.sse_listen_notify`), else None."""
    from jobstore.notify import EventListener, supports_notify

    if not (settings.sse_listen_notify and supports_notify(settings.database_url)):
        return None
    listener = getattr(state, "event_listener", None)
    if listener is None:
        with _LISTENER_LOCK:
            listener = getattr(state, "event_listener", None)
            if listener is None:
                listener = state.event_listener = EventListener(settings.database_url)
    return listener
