"""GET /api/v1/tasks and /api/v1/neurons: names, descriptions, parameter schemas, defaults."""

from __future__ import annotations

from functools import cache
from typing import Any

from fastapi import APIRouter

from celif_core.spec import catalog_neurons, catalog_tasks, training_defaults, training_schema
from service.deps import CurrentUser
from service.errors import NotFound

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
