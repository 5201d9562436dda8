"""The parts of the job spec the library relies on: defaults, derived facts, cross-field checks."""

from __future__ import annotations

import math

import pytest

from celif_core.models import build_model
from celif_core.spec import SpecError, SpecLimits, count_parameters, estimate, validate_spec


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
    model = build_model(spec.network)
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


def test_every_mistake_is_reported_at_once_with_did_you_mean():
    with pytest.raises(SpecError) as err:
        validate_spec(
            {
                "task": {"name": "adding", "params": {"seq_len": 20, "val_sise": 50}},
                "model": {"hiden": [16]},
                "training": {"batch_size": -1},
                "trainig": {},
            }
        )
    by_loc = {tuple(e["loc"]): e["msg"] for e in err.value.errors}
    assert set(by_loc) == {
        ("trainig",),
        ("task", "params", "val_sise"),
        ("model", "hiden"),
        ("training", "batch_size"),
    }
    assert "did you mean 'hidden'?" in by_loc[("model", "hiden")]
    assert "did you mean 'training'?" in by_loc[("trainig",)]
    assert "did you mean 'val_size'?" in by_loc[("task", "params", "val_sise")]
    with pytest.raises(SpecError) as err:
        validate_spec({"task": {"name": "adding"}, "model": {"zzz": 1}})
    assert "expected one of: neuron, architecture, hidden" in err.value.errors[0]["msg"]


# a network and batches small enough that only the eval-set size is over its limit
SMALL_STEP = {"model": {"hidden": [16]}, "training": {"batch_size": 1, "eval_batch_size": 1}}


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        (
            {"task": {"name": "adding"}, "model": {"hidden": [4096], "te_length": 10**9}},
            ["model", "te_length"],
        ),
        (
            {
                "task": {"name": "adding", "params": {"seq_len": 100_000, "test_size": 100_000}},
                **SMALL_STEP,
            },
            ["task", "params", "test_size"],
        ),
        (
            {
                "task": {"name": "copy_memory", "params": {"delay": 99_980, "val_size": 100_000}},
                **SMALL_STEP,
            },
            ["task", "params", "val_size"],
        ),
    ],
)
def test_resource_limits_name_the_field(data, loc):
    with pytest.raises(SpecError) as err:
        validate_spec(data)
    assert [e["loc"] for e in err.value.errors] == [loc]
    assert "over the limit" in err.value.errors[0]["msg"]
    # the same spec passes when the deployment's limits allow it
    validate_spec(data, limits=SpecLimits(2**62, 2**62, 2**62))


def test_limits_are_configurable():
    celif = {"task": {"name": "adding", "params": {"seq_len": 20}}, "model": {"hidden": [16]}}
    est = estimate(validate_spec(celif))
    assert est["te_parameters"] == 20 * 16 and est["eval_activation_bytes"] > 0
    data = {"task": {"name": "adding", "params": {"seq_len": 20}}, "model": {"neuron": "lif"}}
    est = estimate(validate_spec(data))
    assert est["te_parameters"] == 0
    with pytest.raises(SpecError) as err:
        validate_spec(data, limits=SpecLimits(max_parameters=est["parameters"] - 1))
    assert err.value.errors[0]["loc"] == ["model", "hidden"]


def test_memory_modes_and_the_old_auto():
    # one spelling: store | recompute; "auto" (which always stored) still validates, as "store"
    base = {"task": {"name": "adding"}}
    assert validate_spec(base).training.memory == "store"
    old = validate_spec({**base, "training": {"memory": "auto"}})
    assert old.training.memory == "store"
    assert validate_spec({**base, "training": {"memory": "recompute"}}).training.memory == (
        "recompute"
    )
    with pytest.raises(SpecError, match=r"training\.memory"):
        validate_spec({**base, "training": {"memory": "save"}})


def test_network_config_from_spec():
    spec = validate_spec(
        {"task": {"name": "copy_memory", "params": {"delay": 5}},
         "model": {"hidden": [8, 4], "te_shared": False}}
    )  # fmt: skip
    net = spec.network
    assert (net.input_size, net.hidden, net.output_size) == (10, (8, 4), 10)
    assert (net.readout, net.te_mode, net.te_length, net.seq_len) == ("every", "per_layer", 25, 25)
    assert dict(net.neuron_params) == spec.model.neuron_params.model_dump()
    assert count_parameters(spec) == net.num_parameters()
