"""Learning curves of a job, rendered by `celif_core.curves` from its metric events. Imported
lazily by the route."""

from __future__ import annotations

from celif_core.curves import render_curves as _render
from jobstore.db.models import JobEvent

MEDIA_TYPES = {"png": "image/png", "svg": "image/svg+xml"}


def render_curves(title: str, events: list[JobEvent], fmt: str) -> bytes:
    """One panel per metric name (loss, accuracy, ...), one line per split (train/val/test)."""
    points = ({"step": e.step, "split": e.split, "name": e.name, "value": e.value} for e in events)
    return _render(title, points, fmt)
