"""GET /api/v1/tasks and /api/v1/neurons: names, descriptions, parameter schemas, defaults."""

from __future__ import annotations

from functools import cache
from typing import Any

from fastapi import APIRouter

from celif_core.spec import catalog_neurons, catalog_tasks, training_defaults, training_schema
from service.deps import CurrentUser

router = APIRouter(prefix="/api/v1", tags=["catalog"])


@cache
def _tasks() -> dict[str, Any]:
    return {"items": catalog_tasks()}


@cache
def _neurons() -> dict[str, Any]:
    return {
        "items": catalog_neurons(),
        "training_defaults": training_defaults(),
        "training_schema": training_schema(),
    }


@router.get("/tasks", responses={401: {}})
def list_tasks(_user: CurrentUser) -> dict[str, Any]:
    """Every task: `name`, `description`, `params_schema` (JSON schema) and `defaults`."""
    return _tasks()


@router.get("/neurons", responses={401: {}})
def list_neurons(_user: CurrentUser) -> dict[str, Any]:
    """Every neuron model with its parameter schema and defaults, which architectures it
    supports, and the training section's defaults."""
    return _neurons()
