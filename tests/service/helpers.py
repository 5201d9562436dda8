"""Helpers shared by the service tests."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

SMALL_SPEC: dict[str, Any] = {
    "name": "adding-20",
    "task": {"name": "adding", "params": {"seq_len": 20}},
    "model": {"neuron": "celif", "hidden": [16, 16]},
    "training": {"max_steps": 200, "batch_size": 32},
}


def small_spec(**sections: Any) -> dict[str, Any]:
    """A small valid spec; each keyword replaces (dict: updates) one top-level section."""
    spec = copy.deepcopy(SMALL_SPEC)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(interval)
