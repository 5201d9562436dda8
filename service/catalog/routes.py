"""GET /api/v1/tasks and /api/v1/neurons: names, descriptions, parameter schemas, defaults,
and the facts about each that a client (the dashboard) would otherwise have to hard-code.

Every name served here comes from `celif_core.catalog` / `celif_core.spec` (TASKS, NEURONS, the
ce modes and the training
section's Literal fields, which its JSON schema lists as `enum`s); the dashboard reads them from
these two routes and spells none of them itself.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

from fastapi import APIRouter
from pydantic import ValidationError

from celif_core.catalog import SPIKING_NEURONS, TE_CE_MODES
from celif_core.spec import (
    MNIST_SEQ_LEN,
    NEURONS,
    TASKS,
    MnistParams,
    ModelSpec,
    PsMnistParams,
    TaskInfo,
    catalog_neurons,
    catalog_tasks,
    training_defaults,
    training_schema,
)
from service.deps import CurrentUser
from service.errors import NotFound

# The submit form's first choice: a task on generated data (no MNIST download needed).
DEFAULT_TASK = "adding"

router = APIRouter(prefix="/api/v1", tags=["catalog"])


def _input_size(info: TaskInfo) -> int | None:
    """F of the task's inputs, or None where it depends on the job (an uploaded dataset's F is
    the spec's `task.params.input_size`)."""
    try:
        return info.input_size(info.params())
    except ValidationError:  # params without defaults (dataset_id): known per job only
        return None


def _image(info: TaskInfo) -> dict[str, Any] | None:
    """For MNIST tasks, the digit image the sequence is made from (pixel_order "raster": a
    drawn digit is a valid input; "permuted": only the task's own samples are)."""
    if not issubclass(info.params, MnistParams):
        return None
    side = math.isqrt(MNIST_SEQ_LEN)
    order = "permuted" if issubclass(info.params, PsMnistParams) else "raster"
    return {"height": side, "width": side, "pixel_order": order}


@cache
def _tasks() -> dict[str, Any]:
    items = [
        {**item, "input_size": _input_size(TASKS[item["name"]]), "image": _image(TASKS[item["name"]])}
        for item in catalog_tasks()
    ]  # fmt: skip
    return {"items": items, "default": DEFAULT_TASK}


def _neuron_facts(name: str) -> dict[str, Any]:
    fields = NEURONS[name].params.model_fields
    return {
        # spiking neurons have a firing threshold (their layers have spike rasters)
        "spiking": name in SPIKING_NEURONS,
        # the ce_modes whose contextual embedding reads the TE table (JobSpec.uses_te)
        "te_modes": list(TE_CE_MODES) if "ce_mode" in fields else [],
    }


@cache
def _neurons() -> dict[str, Any]:
    return {
        "items": [{**item, **_neuron_facts(item["name"])} for item in catalog_neurons()],
        "default": ModelSpec.model_fields["neuron"].default,
        "training_defaults": training_defaults(),
        "training_schema": training_schema(),
    }


@router.get("/tasks", responses={401: {}})
def list_tasks(_user: CurrentUser) -> dict[str, Any]:
    """Every task: `name`, `description`, `params_schema` (JSON schema), `defaults`,
    `input_size` (F; null where the job's spec says it) and `image` (MNIST's digit shape and
    pixel order, else null); `default`: the task a form offers first."""
    return _tasks()


@router.get("/neurons", responses={401: {}})
def list_neurons(_user: CurrentUser) -> dict[str, Any]:
    """Every neuron model with its parameter schema and defaults, which architectures it
    supports, whether it spikes and which `ce_mode`s read the TE table; `default`: the spec's
    default neuron; the training section's defaults and JSON schema (its `enum`s name the
    optimizers, schedules, devices, backends and memory modes)."""
    return _neurons()


@router.get("/recipes", responses={401: {}})
def list_recipes(_user: CurrentUser) -> dict[str, Any]:
    """The named recipes (`celif_core.recipes`): name, description, report table, the full spec
    and the reference figures (paper, neuroseqbench)."""
    from celif_core.recipes import RECIPES

    return {"items": [r.to_dict() for r in RECIPES.values()]}


@router.get("/recipes/{name:path}", responses={401: {}, 404: {}})
def get_recipe(name: str, _user: CurrentUser) -> dict[str, Any]:
    """One recipe by name (names contain `/`, e.g. `paper/seq_mnist-83k`)."""
    from celif_core.recipes import get_recipe as lookup

    recipe = lookup(name)
    if recipe is None:
        raise NotFound(f"no recipe named {name!r}; GET /api/v1/recipes lists them")
    return recipe.to_dict()
