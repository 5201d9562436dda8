"""Helpers shared by the service tests."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from tests import helpers

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
    return helpers.wait_for(predicate, timeout, interval=interval)
