"""Training budgets (max_steps or max_epochs) and the learning-rate schedules over them."""

from __future__ import annotations

import math

import pytest

from celif_core.spec import SpecError, estimate, validate_spec
from celif_core.trainer import DataDirs, Trainer, lr_at

from .conftest import make_spec

MNIST = {"name": "seq_mnist", "params": {"val_size": 1000}}


def _spec(training, task=MNIST):
    return validate_spec({"task": task, "training": training})


def test_max_epochs_converts_to_steps_over_the_training_split():
    spec = _spec({"max_epochs": 3, "batch_size": 256})
    assert spec.training.max_steps is None and spec.training.max_epochs == 3
    assert spec.train_size == 59000
    assert spec.total_steps == math.ceil(3 * 59000 / 256) == 692
    est = estimate(spec)
    assert est["total_steps"] == 692 and est["train_size"] == 59000
    subset = _spec(
        {"max_epochs": 2, "batch_size": 10}, {"name": "ps_mnist", "params": {"train_subset": 95}}
    )
    assert subset.train_size == 95 and subset.total_steps == 19
    assert validate_spec(spec.to_dict()) == spec  # the stored spec round-trips


def test_default_budget_is_max_steps():
    spec = _spec({})
    assert (spec.training.max_steps, spec.training.max_epochs) == (5000, None)
    assert spec.total_steps == 5000


@pytest.mark.parametrize(
    ("training", "field"),
    [
        ({"max_steps": 10, "max_epochs": 2}, "max_epochs"),
        ({"max_steps": None}, "max_steps"),
        ({"max_steps": None, "max_epochs": None}, "max_steps"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"lr_schedule": "step", "lr_gamma": 0}, "lr_gamma"),
        ({"lr_schedule": "step", "lr_step_epochs": 0}, "lr_step_epochs"),
    ],
)
def test_budget_errors_name_the_field(training, field):
    with pytest.raises(SpecError) as info:
        _spec(training)
    assert info.value.errors[0]["loc"] == ["training", field], info.value.errors
    if "max_epochs" in training and training.get("max_steps") is not None:
        assert "exactly one" in info.value.errors[0]["msg"]


@pytest.mark.parametrize("task", ["adding", "copy_memory"])
@pytest.mark.parametrize(
    ("training", "field"),
    [({"max_epochs": 2}, "max_epochs"), ({"lr_schedule": "step"}, "lr_schedule")],
)
def test_synthetic_tasks_have_no_epochs(task, training, field):
    with pytest.raises(SpecError) as info:
        _spec(training, {"name": task})
    err = info.value.errors[0]
    assert err["loc"] == ["training", field]
    assert "no finite training split" in err["msg"]


def test_step_schedule_values_at_epoch_boundaries():
    # 100 training images, batch 30: epoch e starts with the batch of step ceil(100 e / 30)
    task = {"name": "seq_mnist", "params": {"train_subset": 100}}
    spec = _spec(
        {"max_epochs": 7, "batch_size": 30, "lr": 1.0, "lr_schedule": "step",
         "lr_step_epochs": 2, "lr_gamma": 0.5},
        task,
    )  # fmt: skip
    assert spec.total_steps == math.ceil(700 / 30) == 24
    # step 3 starts at image 90 (epoch 0); step 4 at image 120 (epoch 1); step 7 at 210 (epoch 2)
    expected = {0: 1.0, 3: 1.0, 4: 1.0, 6: 1.0, 7: 0.5, 13: 0.5, 14: 0.25, 20: 0.125, 23: 0.125}
    assert {s: lr_at(spec, s) for s in expected} == expected
    for step in range(spec.total_steps):
        assert lr_at(spec, step) == 0.5 ** (spec.epoch_at(step) // 2)


def test_cosine_runs_over_the_epoch_budget():
    spec = _spec({"max_epochs": 2, "batch_size": 100, "lr": 1.0, "lr_schedule": "cosine"})
    total = spec.total_steps
    assert total == 1180
    assert lr_at(spec, 0) == 1.0
    assert lr_at(spec, total // 2) == pytest.approx(0.5)
    assert lr_at(spec, total) == pytest.approx(0.0)


def test_trainer_honours_max_epochs_and_the_step_schedule(tmp_path, mnist_dir):
    spec = make_spec(
        "seq_mnist", hidden=[6], train_subset=40, val_size=100,
        training={"max_steps": None, "max_epochs": 3, "batch_size": 16, "lr": 0.01,
                  "lr_schedule": "step", "lr_step_epochs": 1, "lr_gamma": 0.5,
                  "eval_every": 1000, "checkpoint_every": 1000, "eval_batch_size": 500},
    )  # fmt: skip
    seen = []

    class Rec:
        def on_step(self, step, total):
            seen.append((step, total, trainer.optimizer.param_groups[0]["lr"]))

    trainer = Trainer(spec, checkpoint_dir=tmp_path, callbacks=Rec(), data_dirs=DataDirs(mnist_dir))
    trainer.setup()
    result = trainer.train()
    assert result.status == "completed" and result.step == 8  # ceil(3 * 40 / 16)
    assert [s for s, _, _ in seen] == list(range(1, 9)) and {t for _, t, _ in seen} == {8}
    # epochs of steps 0..7 (batch start 0,16,...,112 over 40): 0,0,0,1,1,2,2,2
    assert [lr for _, _, lr in seen] == [0.01] * 3 + [0.005] * 2 + [0.0025] * 3
