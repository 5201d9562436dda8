"""The job event stream as Server-Sent Events, and its ordering rule.

Events are read in pages by `id > cursor` (jobstore/events.py: ids of one job commit in order),
framed as `id:`/`event:`/`data:`, resumed from `Last-Event-ID`, kept alive with comments, and
ended with `event: end` once the job has finished and its last event was sent.
"""

from __future__ import annotations

import asyncio
import json
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
    factory: sessionmaker[Session], job_id: str, after: int, *, poll_s: float, keepalive_s: float
) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"
    last_write = time.monotonic()
    while True:
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
        await asyncio.sleep(poll_s)
