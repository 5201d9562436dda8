"""The metric reporter of one running job: buffers what the trainer reports and writes it.

The trainer's callbacks only append to the buffer (cheap on the training thread); `flush()`
writes the buffered points with the job's progress (step, latest metrics) in one transaction
that also refreshes the lease. It is called by the heartbeat thread, at each checkpoint (whose
row then commits with every point up to its step) and at the end. A failed write puts the
points back, so none is lost to a database hiccup.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.orm import Session

from jobstore.db.session import session_scope
from jobstore.events import append_metric_points
from worker import lease


def metric_key(point: dict[str, Any]) -> str:
    """The point's key in `latest_metrics`, e.g. "val_loss"."""
    split = point.get("split")
    return f"{split}_{point['name']}" if split else str(point["name"])


class MetricReporter:
    def __init__(
        self,
        url: str,
        job_id: str,
        worker_id: str,
        *,
        step: int = 0,
        latest: dict[str, Any] | None = None,
    ):
        self.url, self.job_id, self.worker_id = url, job_id, worker_id
        self._buffer: list[dict[str, Any]] = []
        self._buffer_lock = threading.Lock()
        self._db_lock = threading.Lock()  # orders this job's writes (flushes, lease changes)
        self._latest: dict[str, Any] = dict(latest or {})
        self._step = int(step)
        self._dirty = False
        self._last_step_at: float | None = None
        self.step_time: float | None = None  # seconds per training step (moving average)

    # ------------------------------------------------------------------ the training thread
    def add_points(self, points: list[dict[str, Any]]) -> None:
        with self._buffer_lock:
            self._buffer.extend(points)
            for p in points:
                if p.get("value") is not None:
                    self._latest[metric_key(p)] = float(p["value"])
            self._dirty = True

    def set_step(self, step: int) -> None:
        now = time.monotonic()
        if self._last_step_at is not None:  # moving average of the step time
            dt = now - self._last_step_at
            self.step_time = dt if self.step_time is None else 0.8 * self.step_time + 0.2 * dt
        self._last_step_at = now
        self._step = int(step)
        self._dirty = True

    # ------------------------------------------------------------------ writes
    @property
    def has_unflushed(self) -> bool:
        """Points or progress reported since the last flush."""
        return self._dirty

    def latest_metrics(self) -> dict[str, Any]:
        """A copy of the newest value of every metric reported (and of those at the claim)."""
        with self._buffer_lock:
            return dict(self._latest)

    def flush(self, *, also: Callable[[Session], None] | None = None, **progress: Any) -> bool:
        """Write the buffered points, the step and the latest metrics, and refresh the lease.

        `progress` adds (or overrides) columns of the heartbeat (`states.PROGRESS_COLUMNS`);
        `also(session)` writes more in the same transaction. False, with nothing written, when
        the lease is lost; on any error the points go back to the buffer and it propagates.
        """
        with self._db_lock:
            points = self._take()
            try:
                with session_scope(self.url) as session:
                    values = {"step": self._step, "latest_metrics": self.latest_metrics()}
                    values.update(progress)
                    if not lease.heartbeat(session, self.job_id, self.worker_id, **values):
                        session.rollback()
                        return False
                    append_metric_points(session, self.job_id, points)
                    if also is not None:
                        also(session)
            except Exception:
                self._restore(points)
                raise
        return True

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A transaction ordered with the flushes (for the lease writes of this job)."""
        with self._db_lock, session_scope(self.url) as session:
            yield session

    def _take(self) -> list[dict[str, Any]]:
        with self._buffer_lock:
            points, self._buffer = self._buffer, []
            self._dirty = False
            return points

    def _restore(self, points: list[dict[str, Any]]) -> None:
        with self._buffer_lock:
            self._buffer[:0] = points
            self._dirty = True
