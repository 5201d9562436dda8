"""Studies as pure functions: a search space expanded to trial overrides, overrides applied to a
base spec by dotted path, and the ASHA rung rule. No database, no web: `jobstore.studies` and
`service.studies` call these.

A search is one of
    {"type": "grid", "params": {"training.lr": [0.01, 0.001], "model.hidden": [[16], [32]]}}
    {"type": "random", "seed": 0, "samples": 8,
     "params": {"training.lr": {"dist": "loguniform", "low": 1e-4, "high": 1e-2},
                "training.seed": {"dist": "randint", "low": 0, "high": 100},
                "model.neuron_params.ce_mode": {"dist": "choice", "values": ["none", "te"]}}}
    {"type": "list", "trials": [{"training.lr": 0.01}, {"training.lr": 0.001}]}
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from collections.abc import Mapping
from typing import Any

from celif_core.spec import SpecError

SEARCH_TYPES = ("grid", "random", "list")
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
MAX_PATH_DEPTH = 6


def _fail(loc: list, msg: str) -> SpecError:
    return SpecError([{"loc": loc, "msg": msg, "type": "value_error"}])


def _check_path(path: Any, loc: list) -> str:
    if not isinstance(path, str) or not path or len(path) > 200:
        raise _fail(loc, "a field is a dotted path such as 'training.lr'")
    parts = path.split(".")
    if len(parts) > MAX_PATH_DEPTH or any(not p for p in parts):
        raise _fail([*loc, path], f"{path!r} is not a dotted path such as 'training.lr'")
    return path


def expand_search(search: Any, *, max_trials: int, loc: tuple = ("search",)) -> list[dict]:
    """The overrides `{dotted path: value}` of each trial the search describes, in order.
    Raises `SpecError` naming the search field; more than `max_trials` is an error before any
    trial is built (a grid's size is its product)."""
    loc = list(loc)
    if not isinstance(search, Mapping):
        raise _fail(loc, "a search is an object with a 'type': " + ", ".join(SEARCH_TYPES))
    kind = search.get("type")
    if kind not in SEARCH_TYPES:
        raise _fail([*loc, "type"], f"unknown search type {kind!r}; expected one of {SEARCH_TYPES}")
    allowed = {"grid": {"type", "params"}, "random": {"type", "params", "seed", "samples"}}
    extra = set(search) - allowed.get(kind, {"type", "trials"})
    if extra:
        raise _fail([*loc, sorted(extra)[0]], f"unknown field of a {kind} search")
    if kind == "list":
        trials = search.get("trials")
        if not isinstance(trials, list) or not trials:
            raise _fail([*loc, "trials"], "a non-empty list of {dotted path: value} objects")
        _check_count(len(trials), max_trials, loc)
        out = []
        for i, t in enumerate(trials):
            if not isinstance(t, Mapping) or not t:
                raise _fail([*loc, "trials", i], "a non-empty {dotted path: value} object")
            out.append({_check_path(k, [*loc, "trials", i]): v for k, v in t.items()})
        return out
    params = search.get("params")
    if not isinstance(params, Mapping) or not params:
        raise _fail([*loc, "params"], "a non-empty {dotted path: ...} object")
    for path in params:
        _check_path(path, [*loc, "params"])
    if kind == "grid":
        for path, values in params.items():
            if not isinstance(values, list) or not values:
                raise _fail([*loc, "params", path], "a grid field takes a non-empty list of values")
        _check_count(math.prod(len(v) for v in params.values()), max_trials, loc)
        paths = list(params)
        return [
            dict(zip(paths, combo, strict=True)) for combo in itertools.product(*params.values())
        ]
    seed, samples = search.get("seed", 0), search.get("samples")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise _fail([*loc, "seed"], "a non-negative integer")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise _fail([*loc, "samples"], "a positive integer: how many trials to draw")
    _check_count(samples, max_trials, loc)
    for path, dist in params.items():
        _check_distribution(dist, [*loc, "params", path])
    rng = random.Random(seed)  # the same seed draws the same trials, on any machine
    return [{path: _draw(rng, dist) for path, dist in params.items()} for _ in range(samples)]


def _check_count(n: int, max_trials: int, loc: list) -> None:
    if n > max_trials:
        raise _fail(loc, f"{n} trials is more than the limit of {max_trials} per study")


def _check_distribution(dist: Any, loc: list) -> None:
    if not isinstance(dist, Mapping) or dist.get("dist") not in DISTRIBUTIONS:
        raise _fail([*loc, "dist"], f"a distribution: one of {DISTRIBUTIONS}")
    kind = dist["dist"]
    if kind == "choice":
        if not isinstance(dist.get("values"), list) or not dist["values"]:
            raise _fail([*loc, "values"], "choice takes a non-empty list of values")
        return
    low, high = dist.get("low"), dist.get("high")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
    if not numbers or not math.isfinite(low) or not math.isfinite(high) or low > high:
        raise _fail([*loc, "low"], f"{kind} takes numbers low <= high")
    if kind == "loguniform" and low <= 0:
        raise _fail([*loc, "low"], "loguniform takes low > 0")
    if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
        raise _fail([*loc, "low"], "randint takes integers (high inclusive)")


def _draw(rng: random.Random, dist: Mapping[str, Any]) -> Any:
    kind = dist["dist"]
    if kind == "choice":
        return copy.deepcopy(rng.choice(dist["values"]))
    if kind == "randint":
        return rng.randint(dist["low"], dist["high"])
    if kind == "uniform":
        return rng.uniform(dist["low"], dist["high"])
    return math.exp(rng.uniform(math.log(dist["low"]), math.log(dist["high"])))


def apply_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `base` with each dotted path set (missing objects on the way are created).
    Raises `SpecError` naming the path when it runs through a value that is not an object."""
    spec = copy.deepcopy(dict(base))
    for path, value in overrides.items():
        parts = path.split(".")
        node: Any = spec
        for i, key in enumerate(parts[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise _fail(parts[: i + 1], f"{path!r} runs through {'.'.join(parts[: i + 1])!r}, "
                            "which is not an object")  # fmt: skip
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return spec


# ----------------------------------------------------------------------------- ASHA
def metric_at_rung(points: list[tuple[int, float]], rung: int) -> float | None:
    """The metric of a trial at a rung: its last point at a step <= rung (points sorted by
    step). None when it has none."""
    value = None
    for step, v in points:
        if step > rung:
            break
        if v is not None and math.isfinite(v):
            value = v
    return value


def asha_keeps(value: float, others: list[float], *, mode: str, reduction_factor: int) -> bool:
    """The asynchronous successive-halving rule (Li et al. 2020): at a rung, a trial goes on
    when it is in the top `1/reduction_factor` of the values recorded there (itself included;
    always at least one goes on)."""
    values = sorted([value, *others], reverse=(mode == "max"))
    keep = max(1, len(values) // reduction_factor)
    return values.index(value) < keep
