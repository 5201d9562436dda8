"""The recipe catalog: every recipe is a full spec that validates; merging of overrides."""

from __future__ import annotations

import pytest

from celif_core.recipes import RECIPES, apply_recipe
from celif_core.spec import CE_MODES, SpecError, count_parameters, validate_spec


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_validates_and_round_trips(name):
    recipe = RECIPES[name]
    spec = validate_spec(recipe.spec)
    assert spec.to_dict() == recipe.spec  # stored full, defaults filled
    out = recipe.to_dict()
    assert set(out) == {"name", "description", "table", "spec", "reference"}
    assert set(out["reference"]) == {"paper", "neuroseqbench"}
    for ref in out["reference"].values():
        assert ref is None or (ref["metric"].startswith("test_") and 0 < ref["value"] < 1)


def test_paper_recipes_have_the_papers_networks_and_hyperparameters():
    for size, params in (("83k", 83_562), ("154k", 153_962)):
        for task in ("seq_mnist", "ps_mnist"):
            spec = validate_spec(RECIPES[f"paper/{task}-{size}"].spec)
            assert count_parameters(spec) == params
            p, tr = spec.model.neuron_params, spec.training
            assert (p.alpha, p.rho, p.theta0, p.te_init_std) == (0.5, 0.99, 0.3, 0.1)
            assert (tr.lr, tr.batch_size, tr.max_epochs, tr.lr_schedule) == (5e-4, 256, 100, "step")
            assert spec.train_size == 59_000 and spec.model.te_shared
    assert RECIPES["paper/seq_mnist-83k"].paper == {"metric": "test_accuracy", "value": 0.9819}
    assert RECIPES["paper/ps_mnist-83k"].paper == {"metric": "test_accuracy", "value": 0.9790}
    modes = {validate_spec(RECIPES[f"paper/ablation-{m}"].spec).model.neuron_params.ce_mode
             for m in CE_MODES}  # fmt: skip
    assert modes == set(CE_MODES)
    nsb = validate_spec(RECIPES["neuroseqbench/ps_mnist-ff"].spec)
    p = nsb.model.neuron_params
    assert (p.ce_timing, p.rho, p.theta0, p.te_init_mean, p.te_init_std) == (
        "previous",
        0.98,
        0.5,
        0.01,
        0.01,
    )
    assert (nsb.training.optimizer, nsb.training.lr, nsb.training.grad_clip) == (
        "adamw",
        3e-3,
        None,
    )
    assert RECIPES["neuroseqbench/ps_mnist-ff"].neuroseqbench["value"] == 0.9776


def test_overrides_merge_deeply_and_a_budget_override_replaces_the_budget():
    body = apply_recipe({
        "recipe": "paper/seq_mnist-83k",
        "name": "short",
        "training": {"max_steps": 50},
        "model": {"neuron_params": {"rho": 0.98}},
    })  # fmt: skip
    spec = validate_spec(body)
    assert spec.name == "short" and spec.recipe == "paper/seq_mnist-83k"
    assert spec.training.max_steps == 50 and spec.training.max_epochs is None
    assert spec.model.neuron_params.rho == 0.98 and spec.model.neuron_params.alpha == 0.5
    assert spec.model.hidden == [64, 88, 88]
    assert validate_spec(apply_recipe({"recipe": "demo/adding-tiny"})).name == "demo/adding-tiny"


def test_unknown_recipe_names_the_field_and_lists_the_names():
    with pytest.raises(SpecError) as info:
        apply_recipe({"recipe": "paper/nope"})
    err = info.value.errors[0]
    assert err["loc"] == ["recipe"] and "paper/seq_mnist-83k" in err["msg"]


def test_a_larger_budget_on_another_device_continues_the_run_other_training_does_not():
    """init_from continues a run (optimizer, step) only when the run's math is the same: the
    budget and where it runs (device, backend, memory) may differ, nothing else."""
    from celif_core.spec import continues_run

    source = validate_spec(apply_recipe({"recipe": "paper/seq_mnist-83k"}))
    longer = validate_spec(
        apply_recipe(
            {
                "recipe": "paper/seq_mnist-83k",
                "training": {"max_epochs": 200, "device": "cpu", "backend": "reference"},
            }
        )
    )
    assert continues_run(longer, source)
    other_lr = validate_spec(
        apply_recipe({"recipe": "paper/seq_mnist-83k", "training": {"lr": 1e-3}})
    )
    assert not continues_run(other_lr, source)
