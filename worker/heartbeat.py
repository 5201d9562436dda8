"""The heartbeat thread of one running job.

Refreshes the lease every `heartbeat_interval_s` (through the reporter's flush, which also
writes the metric batch), flushes metrics every `metrics_flush_interval_s`, polls
`cancel_requested` at least once per training step (`cancel_poll_interval_s` at most apart),
and turns a warm shutdown of the worker into a request to stop. What it finds it reports
through the `StopSignal`; it never raises into the training thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import select

from jobstore.db.models import Job
from jobstore.db.session import get_engine
from jobstore.settings import Settings
from worker.reporter import MetricReporter
from worker.stopping import StopSignal, shutdown_requested

log = logging.getLogger(__name__)

MIN_POLL_S = 0.02


class Heartbeat:
    def __init__(
        self,
        settings: Settings,
        reporter: MetricReporter,
        stop: StopSignal,
        *,
        on_shutdown: Callable[[], None],
    ):
        self.settings, self.reporter, self.stop = settings, reporter, stop
        self.on_shutdown = on_shutdown
        self._done = threading.Event()
        self._conn = None
        self._poll = select(Job.cancel_requested, Job.status, Job.worker_id).where(
            Job.id == reporter.job_id
        )
        self._thread = threading.Thread(
            target=self._loop, name=f"heartbeat-{reporter.job_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=10)
        self._close()

    def _loop(self) -> None:
        r, s = self.reporter, self.settings
        base = min(s.cancel_poll_interval_s, s.heartbeat_interval_s, s.metrics_flush_interval_s)
        last_beat = last_flush = time.monotonic()
        # Cancellation is seen within one step: poll at least once per training step (never
        # more often than MIN_POLL_S: one indexed single-row SELECT each time).
        while not self._done.wait(max(MIN_POLL_S, min(base, r.step_time or base))):
            now = time.monotonic()
            try:
                if shutdown_requested.is_set():
                    self.on_shutdown()
                self._poll_cancel()
                due_flush = now - last_flush >= s.metrics_flush_interval_s and r.has_unflushed
                due_beat = now - last_beat >= s.heartbeat_interval_s
                if due_flush or due_beat:
                    if not r.flush():
                        self.stop.lose_lease()
                        return
                    last_beat = last_flush = now
            except Exception:
                # DB hiccup: keep training and retry; if it lasts past stale_after_s the reaper
                # takes the job and our next heartbeat finds the lease lost.
                log.exception("job %s: heartbeat failed", r.job_id)

    def _poll_cancel(self) -> None:
        """One indexed single-row SELECT on a connection kept open in autocommit mode (no
        session or transaction per poll: this runs up to once per training step)."""
        if self._conn is None:
            engine = get_engine(self.reporter.url)
            self._conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            row = self._conn.execute(self._poll).first()
        except Exception:
            self._close()
            raise
        if row is None or row.status != "running" or row.worker_id != self.reporter.worker_id:
            self.stop.lose_lease()  # deleted, cancelled by the API, or reaped
        elif row.cancel_requested:
            self.stop.request("cancel")

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                log.debug("closing the poll connection failed", exc_info=True)
            self._conn = None
