"""Search spaces, overrides by dotted path and the ASHA rule (pure functions)."""

from __future__ import annotations

import math

import pytest

from celif_core.spec import SpecError
from celif_core.study import apply_overrides, asha_keeps, expand_search, metric_at_rung


def test_grid_is_the_product_first_field_slowest():
    out = expand_search(
        {"type": "grid", "params": {"a.x": [1, 2], "b": ["p", "q", "r"]}}, max_trials=10
    )
    assert out[:3] == [{"a.x": 1, "b": "p"}, {"a.x": 1, "b": "q"}, {"a.x": 1, "b": "r"}]
    assert len(out) == 6


def test_random_is_seeded_and_in_range():
    search = {
        "type": "random",
        "seed": 3,
        "samples": 50,
        "params": {"lr": {"dist": "loguniform", "low": 1e-5, "high": 1e-1},
                   "k": {"dist": "randint", "low": 1, "high": 3},
                   "m": {"dist": "choice", "values": [[1], [2]]}},
    }  # fmt: skip
    a, b = expand_search(search, max_trials=50), expand_search(search, max_trials=50)
    assert a == b
    assert all(1e-5 <= t["lr"] <= 1e-1 for t in a)
    logs = [math.log10(t["lr"]) for t in a]
    assert min(logs) < -4 and max(logs) > -2  # spread over decades, not bunched at the top
    assert {t["k"] for t in a} == {1, 2, 3} and {str(t["m"]) for t in a} == {"[1]", "[2]"}


@pytest.mark.parametrize(
    ("search", "loc"),
    [
        ({"type": "grid", "params": {"x": []}}, ["search", "params", "x"]),
        ({"type": "grid", "params": {"a..b": [1]}}, ["search", "params", "a..b"]),
        ({"type": "random", "samples": 2, "params": {"x": {"dist": "loguniform", "low": 0, "high": 1}}},
         ["search", "params", "x", "low"]),
        ({"type": "random", "params": {"x": {"dist": "choice", "values": [1]}}}, ["search", "samples"]),
        ({"type": "list", "trials": [{}]}, ["search", "trials", 0]),
        ({"type": "grid", "params": {"x": list(range(11))}}, ["search"]),
    ],
)  # fmt: skip
def test_bad_searches_name_the_field(search, loc):
    with pytest.raises(SpecError) as err:
        expand_search(search, max_trials=10)
    assert err.value.errors[0]["loc"] == loc


def test_overrides_set_dotted_paths_on_a_copy():
    base = {"training": {"lr": 1}, "model": {"hidden": [8]}}
    out = apply_overrides(base, {"training.lr": 2, "model.neuron_params.ce_mode": "te"})
    assert out == {"training": {"lr": 2}, "model": {"hidden": [8], "neuron_params": {"ce_mode": "te"}}}  # fmt: skip
    assert base["training"]["lr"] == 1
    with pytest.raises(SpecError) as err:
        apply_overrides(base, {"model.hidden.width": 3})
    assert err.value.errors[0]["loc"] == ["model", "hidden"]


def test_asha_rule():
    assert metric_at_rung([(10, 0.5), (20, 0.4), (30, 0.1)], 25) == 0.4
    assert metric_at_rung([(30, 0.1)], 25) is None
    assert asha_keeps(0.1, [0.2], mode="min", reduction_factor=2)
    assert not asha_keeps(0.3, [0.2], mode="min", reduction_factor=2)
    assert asha_keeps(0.9, [0.2, 0.5, 0.1], mode="max", reduction_factor=2)
    assert not asha_keeps(0.5, [0.2, 0.9, 0.1], mode="max", reduction_factor=3)  # keep 1 of 4
