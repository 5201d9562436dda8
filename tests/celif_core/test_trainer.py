"""The trainer: callbacks, metric points, determinism, stopping, failures, telemetry."""

from __future__ import annotations

import math

import pytest
import torch

from celif_core.errors import TrainingError
from celif_core.models import build_model
from celif_core.telemetry import E_AC_PJ, E_MAC_PJ, energy_estimate, spike_telemetry
from celif_core.trainer import DataDirs, Trainer, resolve_device

from .conftest import make_spec


class Recorder:
    def __init__(self, stop_after=None):
        self.points, self.steps, self.checkpoints = [], [], []
        self.stop_after = stop_after
        self.stop_checks = 0

    def on_metrics(self, points):
        self.points.extend(points)

    def on_step(self, step, max_steps):
        self.steps.append((step, max_steps))

    def on_checkpoint(self, info):
        self.checkpoints.append(info)

    def should_stop(self):
        self.stop_checks += 1
        return self.stop_after is not None and len(self.steps) >= self.stop_after

    def series(self, split, name):
        return [
            (p["step"], p["value"])
            for p in self.points
            if p["split"] == split and p["name"] == name
        ]


def run(spec, tmp_path, callbacks=None):
    rec = callbacks or Recorder()
    trainer = Trainer(spec, checkpoint_dir=tmp_path, callbacks=rec, data_dirs=DataDirs())
    trainer.setup()
    return trainer, trainer.train(), rec


def test_metric_points_and_callbacks(tmp_path):
    spec = make_spec(
        "copy_memory", delay=5, training={"max_steps": 6, "eval_every": 2, "checkpoint_every": 3}
    )
    trainer, result, rec = run(spec, tmp_path)
    assert result.status == "completed" and result.step == 6
    assert rec.steps == [(s, 6) for s in range(1, 7)]
    for p in rec.points:
        assert set(p) == {"step", "epoch", "split", "name", "value", "time"}
        assert isinstance(p["value"], float) and math.isfinite(p["value"])
    assert [s for s, _ in rec.series("train", "loss")] == list(range(1, 7))
    assert [s for s, _ in rec.series("val", "loss")] == [2, 3, 4, 6]  # every 2, and at checkpoint 3
    assert [s for s, _ in rec.series("val", "accuracy")] == [2, 3, 4, 6]
    assert rec.series("test", "loss")[0][0] == 6 and rec.series("test", "accuracy")
    (baseline,) = rec.series("baseline", "loss")
    assert baseline == (0, pytest.approx(10 * math.log(8) / 25))
    assert [c.step for c in rec.checkpoints] == [3, 6]
    assert [c.path.name for c in rec.checkpoints] == [
        "step_00000003.safetensors",
        "step_00000006.safetensors",
    ]
    assert rec.checkpoints[0].is_best
    assert {"train_loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy"} <= set(
        result.metrics
    )
    assert result.best["metric"] == "loss" and result.best["mode"] == "min"
    assert result.best["value"] == min(v for _, v in rec.series("val", "loss"))
    assert result.backend in ("fused", "reference")


def test_telemetry_in_result(tmp_path):
    spec = make_spec("adding", seq_len=20, hidden=[10, 6], training={"max_steps": 2})
    _, result, _ = run(spec, tmp_path)
    tel = result.telemetry
    assert len(tel["firing_rates"]) == 2 and all(0 <= r <= 1 for r in tel["firing_rates"])
    r1, r2 = tel["firing_rates"]
    assert tel["mac_ops"] == 20 * 2 * 10
    assert tel["ac_ops"] == pytest.approx(20 * (r1 * 10 * 6 + r2 * 6 * 1))
    assert tel["energy_nj"] == pytest.approx(
        (tel["mac_ops"] * E_MAC_PJ + tel["ac_ops"] * E_AC_PJ) / 1000
    )


def test_energy_estimate_forms():
    ff = energy_estimate(neuron="celif", architecture="feedforward", input_size=1, hidden=[64, 256, 256],
                         output_size=10, seq_len=784, firing_rates=[0.1, 0.1, 0.1])  # fmt: skip
    rec = energy_estimate(neuron="lif", architecture="recurrent", input_size=1, hidden=[64, 256, 256],
                          output_size=10, seq_len=784, firing_rates=[0.1, 0.1, 0.1])  # fmt: skip
    lstm = energy_estimate(neuron="lstm", architecture="feedforward", input_size=1, hidden=[64, 256, 256],
                           output_size=10, seq_len=784, firing_rates=[])  # fmt: skip
    assert ff["energy_nj"] < rec["energy_nj"] < lstm["energy_nj"]
    assert lstm["ac_ops"] == 0
    # the paper's order of magnitude: a few nJ for the feedforward CE-LIF, hundreds for the LSTM
    assert 1 < ff["energy_nj_per_step"] < 30 and lstm["energy_nj_per_step"] > 300
    assert ff["energy_nj"] == pytest.approx(784 * ff["energy_nj_per_step"])
    model = build_model(make_spec("adding", seq_len=10, hidden=[4]).network)
    tel = spike_telemetry(model, [(torch.rand(3, 10, 2), None)])
    assert len(tel["firing_rates"]) == 1 and tel["energy_nj"] > 0


def test_deterministic_training(tmp_path):
    spec = make_spec("adding", seq_len=15, training={"max_steps": 5, "lr": 0.01})
    _, a, rec_a = run(spec, tmp_path / "a")
    _, b, rec_b = run(spec, tmp_path / "b")
    assert rec_a.series("train", "loss") == rec_b.series("train", "loss")
    assert a.metrics == b.metrics
    assert a.checkpoints[-1].sha256 == b.checkpoints[-1].sha256
    other = make_spec("adding", seq_len=15, training={"max_steps": 5, "lr": 0.01, "seed": 1})
    _, _, rec_c = run(other, tmp_path / "c")
    assert rec_c.series("train", "loss") != rec_a.series("train", "loss")


def test_should_stop_is_checked_every_step(tmp_path):
    spec = make_spec(
        "adding",
        seq_len=15,
        training={"max_steps": 1000, "eval_every": 1000, "checkpoint_every": 1000},
    )
    rec = Recorder(stop_after=3)
    trainer, result, _ = run(spec, tmp_path, callbacks=rec)
    assert result.status == "stopped" and result.step == 3
    assert rec.stop_checks == 4
    assert result.checkpoints == [] and result.telemetry is None
    assert rec.series("train", "loss")  # points flushed before returning


def test_checkpoint_on_stop(tmp_path):
    spec = make_spec("adding", seq_len=15, training={"max_steps": 100, "checkpoint_every": 100})
    trainer = Trainer(
        spec, checkpoint_dir=tmp_path, callbacks=Recorder(stop_after=2), checkpoint_on_stop=True
    )
    trainer.setup()
    result = trainer.train()
    assert [c.step for c in result.checkpoints] == [2]


def test_nan_loss_raises_training_error_with_the_step(tmp_path):
    spec = make_spec(
        "adding", seq_len=15, training={"max_steps": 10, "eval_every": 100, "checkpoint_every": 100}
    )
    trainer = Trainer(spec, checkpoint_dir=tmp_path)
    trainer.setup()
    real_loss = trainer.task.loss
    calls = {"n": 0}

    def loss(out, y):
        calls["n"] += 1
        value = real_loss(out, y)
        return value * float("nan") if calls["n"] == 3 else value

    trainer.task.loss = loss
    with pytest.raises(TrainingError, match="at step 3"):
        trainer.train()


def test_truncated_bptt_keeps_the_forward_values(tmp_path):
    full = make_spec("copy_memory", delay=10, training={"max_steps": 1})
    chunked = make_spec("copy_memory", delay=10, training={"max_steps": 1, "bptt_chunk": 7})
    _, _, rec_full = run(full, tmp_path / "f")
    _, _, rec_chunk = run(chunked, tmp_path / "c")
    # same initial weights and batch: the loss of the first step is the same; only gradients differ
    assert rec_chunk.series("train", "loss")[0][1] == pytest.approx(
        rec_full.series("train", "loss")[0][1], rel=1e-5
    )
    cls = make_spec("adding", seq_len=30, training={"max_steps": 3, "bptt_chunk": 8})
    _, result, _ = run(cls, tmp_path / "a")
    assert result.status == "completed"


@pytest.mark.parametrize(
    ("neuron", "architecture"),
    [
        ("lif", "feedforward"),
        ("alif", "recurrent"),
        ("plif", "feedforward"),
        ("celif", "recurrent"),
        ("lstm", "feedforward"),
    ],
)
def test_every_neuron_trains(tmp_path, neuron, architecture):
    spec = make_spec(
        "adding",
        seq_len=12,
        neuron=neuron,
        architecture=architecture,
        training={"max_steps": 3, "lr": 0.01},
    )
    trainer = Trainer(spec, checkpoint_dir=tmp_path)
    trainer.setup()
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.train()
    assert result.status == "completed"
    changed = [
        not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True)
    ]
    assert all(changed)


def test_cosine_schedule_and_optimizers(tmp_path):
    spec = make_spec(
        "adding",
        seq_len=12,
        training={"max_steps": 4, "lr_schedule": "cosine", "lr": 0.1, "optimizer": "sgd"},
    )
    trainer = Trainer(spec, checkpoint_dir=tmp_path)
    trainer.setup()
    assert trainer._lr_at(0) == pytest.approx(0.1)
    assert trainer._lr_at(2) == pytest.approx(0.05)
    assert trainer._lr_at(4) == pytest.approx(0.0, abs=1e-12)
    assert isinstance(trainer.optimizer, torch.optim.SGD)


def test_evaluate_and_device(tmp_path):
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    trainer = Trainer(make_spec("adding", seq_len=12), checkpoint_dir=tmp_path)
    with pytest.raises(RuntimeError, match="setup"):
        trainer.evaluate("val")
    trainer.setup()
    metrics = trainer.evaluate("val")
    assert set(metrics) == {"loss", "mse"}
    with pytest.raises(ValueError, match="split"):
        trainer.evaluate("train")
    assert trainer.model.training  # evaluate restores train mode
