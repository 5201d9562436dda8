"""Why a running job stops before its last step: cancelled by its owner, lease lost, or its
worker shutting down. Set by the heartbeat thread and the signal handler, read by the trainer's
`should_stop` (an in-memory flag, checked every step)."""

from __future__ import annotations

import threading
from typing import Literal

StopReason = Literal["cancel", "lease_lost", "shutdown"]

# Set in a pool child when its worker shuts down warmly (worker/tasks.py): the running job
# checkpoints and re-queues itself. Process-level by nature: it is about this process, not
# about one job.
shutdown_requested = threading.Event()


class LeaseLost(Exception):
    """This worker no longer holds the job (reaped after a stall, or cancelled by the API)."""


class StopSignal:
    """The first reason to stop wins, except a lost lease, which overrides any other: once the
    lease is gone this worker may write nothing more about the job."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: StopReason | None = None

    def request(self, reason: StopReason) -> bool:
        """Stop for `reason` unless already stopping; True if this call set it."""
        if self.reason is not None:
            return False
        self.reason = reason
        self._event.set()
        return True

    def lose_lease(self) -> None:
        self.reason = "lease_lost"
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)
