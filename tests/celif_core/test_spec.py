"""The parts of the job spec the library relies on: defaults, derived facts, cross-field checks."""

from __future__ import annotations

import math

import pytest

from celif_core.models import build_model
from celif_core.spec import SpecError, estimate, validate_spec


def test_defaults_filled_and_derived_facts():
    spec = validate_spec({"task": {"name": "copy_memory", "params": {"delay": 30}}})
    assert spec.seq_len == 50 and spec.input_size == 10 and spec.output_size == 10
    assert spec.kind == "sequence"
    assert spec.model.neuron == "celif" and spec.uses_te and spec.te_length == 50
    p = spec.model.neuron_params
    assert (p.alpha, p.rho, p.theta0, p.ce_mode) == (0.5, 0.99, 0.3, "membrane_te")
    assert p.surrogate_width > 0 and p.te_init_std >= 0
    assert (p.ce_timing, p.te_init_mean) == ("current", 0.0)
    assert validate_spec(spec.model_dump(mode="json")) == spec  # round-trips (checkpoint metadata)


@pytest.mark.parametrize(
    ("task", "facts"),
    [
        ({"name": "seq_mnist"}, (784, 1, 10, "classification")),
        ({"name": "ps_mnist", "params": {"permutation_seed": 3}}, (784, 1, 10, "classification")),
        ({"name": "adding", "params": {"seq_len": 200}}, (200, 2, 1, "regression")),
    ],
)
def test_task_facts(task, facts):
    spec = validate_spec({"task": task})
    assert (spec.seq_len, spec.input_size, spec.output_size, spec.kind) == facts


def test_te_length_longer_table_is_allowed_and_used():
    spec = validate_spec(
        {
            "task": {"name": "adding", "params": {"seq_len": 20}},
            "model": {"te_length": 64, "hidden": [8]},
        }
    )
    model = build_model(spec)
    assert tuple(model.te.shape) == (64, 8)


def test_te_length_not_needed_without_te():
    # a non-TE neuron is not bound by te_length
    spec = validate_spec(
        {"task": {"name": "seq_mnist"}, "model": {"neuron": "lif", "te_length": 10}}
    )
    assert not spec.uses_te


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (
            {"task": {"name": "adding"}, "model": {"neuron": "lstm", "architecture": "recurrent"}},
            "model.architecture",
        ),
        (
            {
                "task": {"name": "adding"},
                "model": {"neuron": "lstm"},
                "training": {"bptt_chunk": 10},
            },
            "training.bptt_chunk",
        ),
        ({"task": {"name": "adding"}, "training": {"batch_size": 0}}, "training.batch_size"),
        (
            {
                "task": {"name": "seq_mnist"},
                "training": {"batch_size": 8192},
                "model": {"hidden": [4096] * 4},
            },
            "training.batch_size",
        ),
        (
            {"task": {"name": "adding"}, "model": {"neuron_params": {"beta": 1.0}}},
            "model.neuron_params.beta",
        ),
        ({"task": {"name": "dataset", "params": {"dataset_id": "x"}}}, "task.params.dataset_id"),
        ("not a dict", ""),
    ],
)
def test_bad_specs(data, field):
    with pytest.raises(SpecError) as err:
        validate_spec(data)
    assert field in str(err.value)


def test_estimate():
    spec = validate_spec({"task": {"name": "seq_mnist"}, "model": {"hidden": [64, 88, 88]}})
    est = estimate(spec)
    assert est["parameters"] == 83_562 and est["seq_len"] == 784
    assert est["activation_bytes"] > 0
    assert math.isfinite(est["activation_bytes"])
